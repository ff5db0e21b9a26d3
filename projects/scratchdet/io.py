"""Crash-safe file writes shared by checkpoints, evaluation results, prior caches and tools."""
import json
import os
import tempfile

__all__ = ["atomic_write", "write_json_atomic"]


def atomic_write(path: str, write, mode: str = "wb") -> None:
    """
    Call ``write(f)`` on a temporary file next to ``path`` (``.tmp_<name>.<random>``, one
    per writer, so that concurrent writers never share one), flush and fsync it, then
    ``os.replace`` it over ``path`` (and fsync the directory): readers see the old file
    or the complete new one, never a partial write, even after a crash.
    """
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".tmp_{name}.", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; a plain open would not
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str, obj, indent=None) -> str:
    """``json.dump(obj)`` to ``path`` with :func:`atomic_write` (the directory is created
    if needed). Returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: json.dump(obj, f, indent=indent), mode="w")
    return path
