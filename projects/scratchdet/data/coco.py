"""Register COCO-format datasets that live at any path, with errors that name the path."""
import os
import re
from typing import Dict, List, Mapping, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

__all__ = [
    "register_coco_dataset",
    "register_datasets_from_config",
    "register_datasets_from_yacs",
    "coco_mini_root",
]


def coco_mini_root() -> str:
    """``$SCRATCHDET_COCO_MINI``, else ``<repo>/../shared/data/coco_mini``."""
    default = os.path.join(
        os.path.dirname(__file__), "..", "..", "..", "..", "shared", "data", "coco_mini")
    return os.path.abspath(os.environ.get("SCRATCHDET_COCO_MINI", default))


def register_coco_dataset(name: str, json_file: str, image_root: str) -> None:
    """
    Register a COCO-format instance dataset under ``name`` (idempotent for the same
    paths). Raises ``FileNotFoundError`` naming the missing file or directory before
    anything is registered, and ``ValueError`` when ``name`` is already taken by a
    different dataset.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"dataset {name!r}: annotation file {json_file!r} does not exist")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"dataset {name!r}: image directory {image_root!r} does not exist")
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if getattr(meta, "json_file", None) == json_file and \
                getattr(meta, "image_root", None) == image_root:
            return
        raise ValueError(f"dataset {name!r} is already registered with "
                         f"json_file={getattr(meta, 'json_file', None)!r}")
    register_coco_instances(name, {}, json_file, image_root)


def register_datasets_from_config(datasets: Mapping[str, Dict]) -> None:
    """
    Register every entry of a config's ``datasets`` mapping:
    ``{name: {"json_file": ..., "image_root": ...}}``.
    """
    for name, entry in (datasets or {}).items():
        missing = [k for k in ("json_file", "image_root") if k not in entry]
        if missing:
            raise KeyError(f"datasets.{name}: missing key(s) {missing}")
        register_coco_dataset(name, entry["json_file"], entry["image_root"])


_COCO_MINI_VAR = re.compile(r"\$(\{SCRATCHDET_COCO_MINI\}|SCRATCHDET_COCO_MINI(?![A-Za-z0-9_]))")
_ANY_VAR = re.compile(r"\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")


def _expand_path(path: str) -> str:
    """``$VAR`` / ``${VAR}`` and ``~`` expanded, then normalised (so that the same files
    named by a LazyConfig's ``os.path.join`` give the same string); an unset
    ``$SCRATCHDET_COCO_MINI`` stands for :func:`coco_mini_root`."""
    if "SCRATCHDET_COCO_MINI" not in os.environ:
        root = coco_mini_root()
        path = _COCO_MINI_VAR.sub(lambda _: root, path)  # a function: no escapes in root
    return os.path.normpath(os.path.expanduser(os.path.expandvars(path)))


def _yacs_entries(cfg) -> List[Tuple[str, str, str]]:
    entries = cfg.DATASETS.get("COCO_INSTANCES", None) or []
    out = []
    for entry in entries:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3
                and all(isinstance(x, str) and x for x in entry)):
            raise ValueError(
                f"DATASETS.COCO_INSTANCES: entry {entry!r} is not a "
                "[name, json_file, image_root] triple of non-empty strings")
        name, json_file, image_root = entry
        paths = []
        for key, raw in (("json_file", json_file), ("image_root", image_root)):
            path = _expand_path(raw)
            unset = [m.group(1).strip("{}") for m in _ANY_VAR.finditer(path)
                     if m.group(1).strip("{}") not in os.environ]
            if unset and not os.path.exists(path):
                raise ValueError(
                    f"DATASETS.COCO_INSTANCES: entry {list(entry)!r}: {key} {raw!r} uses "
                    f"environment variable(s) {unset} that are not set")
            paths.append(path)
        out.append((name, paths[0], paths[1]))
    return out


def register_datasets_from_yacs(cfg) -> List[str]:
    """
    Register the COCO-format datasets listed in a yacs config's
    ``DATASETS.COCO_INSTANCES`` (``[name, json_file, image_root]`` triples, see
    :func:`scratchdet.add_scratchdet_config`); returns their names. Call it before
    building a data loader (e.g. before ``DefaultTrainer(cfg)``).

    Paths go through ``os.path.expandvars`` and ``os.path.expanduser``; an unset
    ``$SCRATCHDET_COCO_MINI`` stands for :func:`coco_mini_root`. Every entry is checked
    before anything is registered: a malformed entry raises ``ValueError`` naming
    ``DATASETS.COCO_INSTANCES`` and the entry, a missing file or directory
    ``FileNotFoundError`` naming the path (see :func:`register_coco_dataset`).
    """
    entries = _yacs_entries(cfg)
    for name, json_file, image_root in entries:
        for what, path, check in (("annotation file", json_file, os.path.isfile),
                                  ("image directory", image_root, os.path.isdir)):
            if not check(path):
                raise FileNotFoundError(
                    f"DATASETS.COCO_INSTANCES: dataset {name!r}: {what} {path!r} does not exist")
    for name, json_file, image_root in entries:
        register_coco_dataset(name, json_file, image_root)
    return [name for name, _, _ in entries]
