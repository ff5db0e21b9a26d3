"""Register COCO-format datasets that live at any path, with errors that name the path."""
import os
from typing import Dict, Mapping

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

__all__ = ["register_coco_dataset", "register_datasets_from_config", "coco_mini_root"]


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
