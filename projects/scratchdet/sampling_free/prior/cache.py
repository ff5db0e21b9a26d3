"""The prior cache: counts keyed by a fingerprint of everything they depend on, one
process counting per fingerprint (a file lock), written atomically, and read back
only when valid."""
import hashlib
import json
import logging
import os
import time
from typing import Dict, Optional, Sequence, Tuple

import detectron2.data.transforms as T
from detectron2.utils import comm

from ...io import write_json_atomic
from .counts import PriorCounts, count_dataset
from .grid_counter import GridCounter

__all__ = ["prior_fingerprint", "load_or_count", "PRIOR_VERSION", "LOCK_TIMEOUT"]

logger = logging.getLogger(__name__)
PRIOR_VERSION = 4  # part of every fingerprint: raised when the same inputs give other counts


def _dicts_digest(dataset_dicts: Sequence[Dict]) -> str:
    """Digest of what the counts read from the data: sizes, boxes, classes, crowd flags."""
    rows = [[d["height"], d["width"], [[list(map(float, a["bbox"])), int(a["bbox_mode"]),
                                        a["category_id"], a.get("iscrowd", 0)]
                                       for a in d.get("annotations", ())]]
            for d in dataset_dicts]
    return hashlib.sha1(json.dumps(rows).encode()).hexdigest()


def prior_fingerprint(dataset_names, dataset_dicts, counter: GridCounter, augmentations,
                      head_classes: int, extra=None) -> str:
    """A key over everything the counts depend on."""
    key = dict(
        version=PRIOR_VERSION,
        datasets=list(dataset_names) if not isinstance(dataset_names, str) else [dataset_names],
        data=_dicts_digest(dataset_dicts),
        **counter.fingerprint_fields(),
        resize=[repr(a) for a in augmentations
                if isinstance(a, (T.ResizeShortestEdge, T.Resize))],
        size_divisibility=counter.size_divisibility,
        num_classes=counter.num_classes,
        head_classes=head_classes,
        extra=extra,
    )
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cache_path(fingerprint: str) -> str:
    root = os.environ.get("SCRATCHDET_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "scratchdet"))
    return os.path.join(root, "priors", fingerprint + ".json")


_FIELDS = ("num_classes", "num_foreground", "num_valid", "per_class", "num_images", "stderr",
           "seconds")


def _read_cache(path: str, fingerprint: Optional[str] = None,
                warn: bool = True) -> Optional[PriorCounts]:
    """The counts cached at ``path``, or None when there are none. A file that is not
    valid JSON, lacks a field, holds impossible counts or another fingerprint is
    recounted (and then overwritten) with a warning (if ``warn``), never trusted."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            d = json.load(f)
        if not isinstance(d, dict):
            raise ValueError(f"a JSON {type(d).__name__}, not an object")
        missing = [k for k in _FIELDS if k not in d]
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        if fingerprint is not None and d.get("fingerprint") != fingerprint:
            raise ValueError(f"fingerprint {d.get('fingerprint')!r}, expected {fingerprint!r}")
        counts = PriorCounts(**{k: d[k] for k in _FIELDS})
        ints = [counts.num_classes, counts.num_foreground, counts.num_valid, counts.num_images]
        if not (all(isinstance(x, int) and x >= 0 for x in ints + list(counts.per_class))
                and counts.num_classes > 0 and 0 <= counts.num_foreground <= counts.num_valid
                and counts.num_valid > 0):
            raise ValueError(f"impossible counts {ints}")
        counts.fingerprint = d.get("fingerprint", "")
        return counts
    except Exception as e:  # corrupt or foreign file: recount, never trust it
        if warn:
            logger.warning("prior cache %s is unreadable (%s: %s); recomputing", path,
                           type(e).__name__, e)
        return None


def _write_cache(path: str, counts: PriorCounts, fingerprint: str) -> None:
    """Write atomically (:func:`scratchdet.io.write_json_atomic`): readers see the old
    file or the whole new one, never part of one, even after a crash."""
    write_json_atomic(path, dict(counts.to_dict(), fingerprint=fingerprint))


LOCK_TIMEOUT = 1800.0  # seconds a process waits for another one counting the same prior
_LOCK_POLL = 0.05


class _CacheLock:
    """
    An exclusive ``fcntl.flock`` on ``<cache file>.lock``: one process at a time counts
    (and writes) a fingerprint; the others wait, then read its result. The kernel drops
    the lock of a process that dies, so a stale lock cannot block anyone; the lock file
    itself (holding the last holder's pid, for messages) is never deleted, as deleting
    it would let two processes lock two different files. After ``timeout`` seconds of
    waiting, a warning is logged and the caller counts without the lock (the write is
    atomic anyway). Without ``fcntl`` (Windows) nothing is locked.
    """

    def __init__(self, path: str, timeout: Optional[float] = None):
        self.path = path + ".lock"
        self.timeout = LOCK_TIMEOUT if timeout is None else float(timeout)
        self.fd: Optional[int] = None

    def __enter__(self) -> "_CacheLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        t0, logged = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                waited = time.monotonic() - t0
                if waited >= self.timeout:
                    os.close(fd)
                    logger.warning("prior cache lock %s still held by %s after %.0fs; counting "
                                   "without it", self.path, self._holder(), waited)
                    return self
                if not logged:
                    logger.info("prior cache: waiting for %s, counting the same prior (lock %s)",
                                self._holder(), self.path)
                    logged = True
                time.sleep(_LOCK_POLL)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def _holder(self) -> str:
        try:
            with open(self.path) as f:
                return "pid " + (f.read().strip() or "?")
        except OSError:
            return "another process"

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def load_or_count(dataset_names, dataset_dicts, counter: GridCounter, augmentations=(),
                  head_classes: int = 1, use_cache: bool = True, progress: bool = True,
                  extra=None) -> Tuple[PriorCounts, bool]:
    """Counts from the fingerprinted cache when valid, else counted (and cached by rank 0).
    Returns (counts, from_cache); ``counts.fingerprint`` is the fingerprint.

    Processes counting the same fingerprint at once take turns (:class:`_CacheLock`): a
    single process counts, writes the cache atomically, and the others then read it. In
    a distributed job every rank counts its shard and only rank 0 takes the lock, to
    write."""
    fp = prior_fingerprint(dataset_names, dataset_dicts, counter, augmentations, head_classes,
                           extra)
    path = _cache_path(fp)
    cached = _read_cache(path, fp) if use_cache else None
    # every rank must take the same branch: use the cache only if every rank can read it
    hit = comm.all_gather(cached is not None)
    if use_cache and all(hit):
        return cached, True
    if not use_cache:
        counts = count_dataset(dataset_dicts, counter, augmentations, head_classes, progress)
        counts.fingerprint = fp
        return counts, False
    if comm.get_world_size() == 1:
        with _CacheLock(path):
            # written while this process waited? (a corrupt file was reported above)
            cached = _read_cache(path, fp, warn=False)
            if cached is not None:
                return cached, True
            counts = count_dataset(dataset_dicts, counter, augmentations, head_classes,
                                   progress)
            counts.fingerprint = fp
            _write_cache(path, counts, fp)
        return counts, False
    counts = count_dataset(dataset_dicts, counter, augmentations, head_classes, progress)
    counts.fingerprint = fp
    if comm.is_main_process():
        with _CacheLock(path):
            _write_cache(path, counts, fp)
    return counts, False
