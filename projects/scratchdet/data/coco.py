"""Register COCO-format datasets that live at any path, with errors that name the path."""
import json
import logging
import math
import numbers
import os
import re
from typing import Dict, List, Mapping, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

__all__ = [
    "check_coco_json",
    "finite_box",
    "load_coco_checked",
    "nonfinite_box_error",
    "register_coco_dataset",
    "register_datasets_from_config",
    "register_datasets_from_yacs",
    "coco_mini_root",
]

logger = logging.getLogger(__name__)


def coco_mini_root() -> str:
    """``$SCRATCHDET_COCO_MINI``, else ``<repo>/../shared/data/coco_mini``."""
    default = os.path.join(
        os.path.dirname(__file__), "..", "..", "..", "..", "shared", "data", "coco_mini")
    return os.path.abspath(os.environ.get("SCRATCHDET_COCO_MINI", default))


def _not_coco(name: str, json_file: str, what: str) -> ValueError:
    return ValueError(f"dataset {name!r}: annotation file {json_file!r} is not COCO "
                      f"instances format: {what}")


def _first_bad(entries, bad) -> Tuple[int, int, object]:
    """(number of entries for which ``bad(entry)`` holds, index and entry of the first)."""
    idx = [i for i, e in enumerate(entries) if bad(e)]
    return len(idx), (idx[0] if idx else -1), (entries[idx[0]] if idx else None)


def _is_box(b) -> bool:
    return isinstance(b, (list, tuple)) and len(b) == 4 and \
        all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in b)


def check_coco_json(d, name: str, json_file: str) -> None:
    """
    Raise ``ValueError`` naming ``json_file``, the key and the first offending entry
    unless ``d`` (the parsed JSON) is a COCO instances file as Detectron2's
    ``load_coco_json`` reads it: an object whose ``images``, ``annotations`` and
    ``categories`` are lists; every image with ``id``, ``file_name``, ``height`` and
    ``width``; every category with ``id``; every annotation with an ``image_id`` among
    the images' ids, a ``category_id`` among the categories' ids and a ``bbox`` of four
    numbers (its area is not checked: the mapper clips and drops empty boxes).
    """
    if not isinstance(d, dict):
        raise _not_coco(name, json_file, f"the top level is a JSON {type(d).__name__}, not an "
                        "object with 'images', 'annotations' and 'categories'")
    missing = [k for k in ("images", "annotations", "categories") if k not in d]
    if missing:
        raise _not_coco(name, json_file, f"missing key(s) {missing} (it has {sorted(d)[:10]})")
    for key in ("images", "annotations", "categories"):
        if not isinstance(d[key], list):
            raise _not_coco(name, json_file, f"{key!r} is a {type(d[key]).__name__}, not a list")
    if not d["images"]:
        raise _not_coco(name, json_file, "'images' is empty")
    for key, fields in (("images", ("id", "file_name", "height", "width")),
                        ("categories", ("id",)),
                        ("annotations", ("image_id", "category_id", "bbox"))):
        n, i, e = _first_bad(d[key], lambda e: not isinstance(e, dict) or
                             any(f not in e for f in fields))
        if n:
            raise _not_coco(name, json_file, f"{n} of {len(d[key])} {key} lack one of "
                            f"{list(fields)}; the first is {key}[{i}] = {str(e)[:200]}")
    image_ids = {im["id"] for im in d["images"]}
    category_ids = {c["id"] for c in d["categories"]}
    for what, ok in (("image_id", lambda a: a["image_id"] in image_ids),
                     ("category_id", lambda a: a["category_id"] in category_ids),
                     ("bbox", lambda a: _is_box(a["bbox"]))):
        n, i, e = _first_bad(d["annotations"], lambda a: not ok(a))
        if n:
            problem = "is not a list of 4 numbers" if what == "bbox" else \
                f"points at an unknown {'image' if what == 'image_id' else 'category'} id"
            raise _not_coco(name, json_file, f"{n} of {len(d['annotations'])} annotations' "
                            f"{what} {problem}; the first is annotations[{i}] with "
                            f"id={e.get('id')!r}, {what}={e[what]!r}")


def finite_box(bbox) -> bool:
    """Whether every coordinate of ``bbox`` is finite. Python's ``json`` reads ``NaN``,
    ``Infinity`` and ``-Infinity``, so an annotation file can hold boxes that are not."""
    return all(math.isfinite(x) for x in bbox)


_SHOWN = 5  # non-finite annotations named in the warning
_warned = set()  # (dataset, file, annotation ids) already reported in this process


def _drop_nonfinite(dicts: List[Dict], bad: Sequence[Dict], files: Mapping, name: str,
                    json_file: str) -> None:
    """
    Remove (in place) from the dataset dicts the annotations whose bbox is not finite, and
    warn once per dataset and file, naming them: ``bad`` are those annotations as the JSON
    has them (with their ids, which ``load_coco_json`` does not keep), ``files`` maps image
    ids to file names. Without this, Detectron2's mapper drops a NaN box, but keeps an
    infinite width or height, clipped, as a box reaching the image's edge.
    """
    for d in dicts:
        annos = d.get("annotations", ())
        if not all(finite_box(a["bbox"]) for a in annos):
            d["annotations"] = [a for a in annos if finite_box(a["bbox"])]
    key = (name, json_file, tuple(a.get("id") for a in bad))
    if key in _warned:
        return
    _warned.add(key)
    shown = "; ".join(f"annotation id {a.get('id')!r} of image {a['image_id']!r} (file_name "
                      f"{files[a['image_id']]!r}), bbox {list(a['bbox'])}" for a in bad[:_SHOWN])
    more = f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
    logger.warning(f"dataset {name!r}: {len(bad)} annotation(s) in {json_file!r} have a bbox "
                   f"that is not finite (NaN or infinity); dropped from training and from "
                   f"the prior: {shown}{more}")


def nonfinite_box_error(dataset_dicts: Sequence[Dict]) -> ValueError:
    """The error for dataset dicts holding a non-crowd annotation whose bbox is not finite,
    naming the first one's image: what the prior estimator raises rather than count it
    (the datasets registered here never hold one, see :func:`load_coco_checked`)."""
    d, a = next((d, a) for d in dataset_dicts for a in d.get("annotations", ())
                if a.get("iscrowd", 0) == 0 and not finite_box(a["bbox"]))
    return ValueError(
        f"image {d.get('file_name')!r} (image_id {d.get('image_id')!r}) has an annotation "
        f"with bbox {list(a['bbox'])}, which is not finite (NaN or infinity); the prior "
        "counts no such box. Drop it from the dataset: the COCO datasets registered by "
        "scratchdet.data (register_coco_dataset, a config's `datasets`, yacs "
        "DATASETS.COCO_INSTANCES, the shapes splits) drop such annotations when loaded")


def load_coco_checked(json_file: str, image_root: str, name: str) -> List[Dict]:
    """
    Detectron2's ``load_coco_json`` after checking that the files exist and that the JSON
    is COCO instances format (:func:`check_coco_json`): a missing file or directory raises
    ``FileNotFoundError``, anything else ``ValueError``, each naming the dataset and the
    file. This is what :func:`register_coco_dataset` registers, so the error comes at the
    first ``DatasetCatalog.get`` (building a loader, or counting the prior), before any
    training iteration. The JSON is parsed once more than ``load_coco_json`` does.

    Annotations whose bbox holds NaN or infinity are dropped, with one WARNING per dataset
    that counts them and names the file and the first few (annotation id, image, box): the
    train loader and the prior estimator both read these dicts, so neither sees them.
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"dataset {name!r}: annotation file {json_file!r} does not exist")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"dataset {name!r}: image directory {image_root!r} does not exist")
    try:
        with open(json_file) as f:
            d = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise _not_coco(name, json_file, f"not valid JSON ({e})") from e
    check_coco_json(d, name, json_file)
    bad = [a for a in d["annotations"] if not finite_box(a["bbox"])]
    files = {im["id"]: im["file_name"] for im in d["images"]} if bad else {}
    del d
    dicts = load_coco_json(json_file, image_root, name)
    if bad:
        _drop_nonfinite(dicts, bad, files, name, json_file)
    return dicts


def register_coco_dataset(name: str, json_file: str, image_root: str) -> None:
    """
    Register a COCO-format instance dataset under ``name`` (idempotent for the same
    paths), as Detectron2's ``register_coco_instances`` does but loaded with
    :func:`load_coco_checked`. Raises ``FileNotFoundError`` naming the missing file or
    directory before anything is registered, and ``ValueError`` when ``name`` is already
    taken by a different dataset. A file that is not COCO format raises ``ValueError``
    at the first ``DatasetCatalog.get(name)``.
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
    DatasetCatalog.register(name, lambda: load_coco_checked(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root,
                                  evaluator_type="coco")


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
