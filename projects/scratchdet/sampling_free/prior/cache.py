"""The prior cache: counts keyed by a fingerprint of everything they depend on, one
process counting per fingerprint (iopath's file lock), written atomically, and read back
only when valid."""
import contextlib
import hashlib
import json
import logging
import os
from typing import Dict, Optional, Sequence, Tuple

import portalocker
from iopath.common.file_io import file_lock

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


@contextlib.contextmanager
def _cache_lock(path: str):
    """
    iopath's :func:`file_lock` on ``<path>.lock`` (an exclusive ``flock`` through
    portalocker): one process at a time counts and writes a fingerprint; the others wait,
    then read its result. The kernel drops the lock of a process that dies, so a lock
    file left behind blocks nobody, and the lock file is never deleted (deleting it
    would let two processes lock two different files). ``file_lock`` would wait an hour
    and then raise; here, after ``LOCK_TIMEOUT`` seconds of waiting (or where the file
    system cannot lock), a warning is logged and the caller goes on without the lock:
    the cache write is atomic anyway.
    """
    lock = file_lock(path)
    try:
        try:
            lock.acquire(fail_when_locked=True)
        except portalocker.AlreadyLocked:
            logger.info("prior cache: waiting for another process counting the same prior "
                        "(lock %s.lock)", path)
            lock.acquire(timeout=LOCK_TIMEOUT)
    except portalocker.LockException as e:
        held = isinstance(e, portalocker.AlreadyLocked)
        reason = (f"still held after {LOCK_TIMEOUT:.0f}s" if held
                  else f"cannot be taken ({type(e).__name__}: {e})")
        logger.warning("prior cache lock %s.lock %s; counting without it", path, reason)
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def load_or_count(dataset_names, dataset_dicts, counter: GridCounter, augmentations=(),
                  head_classes: int = 1, use_cache: bool = True, progress: bool = True,
                  extra=None) -> Tuple[PriorCounts, bool]:
    """Counts from the fingerprinted cache when valid, else counted (and cached by rank 0).
    Returns (counts, from_cache); ``counts.fingerprint`` is the fingerprint.

    Processes counting the same fingerprint at once take turns (:func:`_cache_lock`): a
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
        with _cache_lock(path):
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
        with _cache_lock(path):
            _write_cache(path, counts, fp)
    return counts, False
