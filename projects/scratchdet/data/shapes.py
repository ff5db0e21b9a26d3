"""The embedded default dataset: procedurally generated shapes on textured backgrounds.

It is generated deterministically on first use into a cache directory as COCO-format
JSON plus JPEG images, then registered in Detectron2's ``DatasetCatalog`` so it takes the
same code path as COCO (``load_coco_checked``, ``DatasetMapper``, ``COCOEvaluator``).

What an image holds (``ShapesSpec`` defaults):

* ``image_size`` x ``image_size`` pixels (160) of texture: a smooth random colour field,
  random stripes on some images, and per-pixel Gaussian noise;
* 0 to 6 objects (uniform; so about one image in seven is empty), each one of three
  classes (circle, square, triangle) drawn filled in a colour from its class's hue band
  with random brightness/saturation, a random rotation for squares and triangles, and a
  size (longest side) log-uniform between 8 px and half the image side;
* the annotation box is the tight box of the object's visible pixels (objects overlap
  little: a new object may overlap earlier ones by at most 0.2 IoU; the occluded
  part of the earlier box is kept as it was drawn, as in COCO).

Instance masks (``segmentation``, COCO polygon format) are exact: an object's polygon is
the outline of the pixels OpenCV painted for it, so that pycocotools rasterises it back
to exactly those pixels and its extent is exactly the annotation box. Like the box it is
amodal: the part a later object covers is kept. OpenCV paints more than the interior of
the geometric shape (the edges' line pixels too), so the shape's own polygon would miss
a boundary ring, large against small objects; the pixel outline is a staircase with
vertices on pixel corners, one vertex per change of a row's first or last pixel. The
``area`` stays the box area it was before masks existed, so bbox AP by size is unchanged.
Images and boxes are those of ``_VERSION`` 1 (the outline draws no random numbers).
"""
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou

from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco import load_coco_checked

__all__ = ["ShapesSpec", "SHAPES_CLASSES", "generate_shapes", "register_shapes", "shapes_dir"]

logger = logging.getLogger(__name__)

SHAPES_CLASSES = ["circle", "square", "triangle"]
# hue band (OpenCV hue, 0..180) of each class
_HUES = {"circle": (0, 12), "square": (50, 75), "triangle": (105, 130)}
_VERSION = 2  # 2: polygon masks added; images and boxes as in 1


@dataclass(frozen=True)
class ShapesSpec:
    num_images: int
    seed: int
    image_size: int = 160
    min_size: float = 8.0
    max_objects: int = 6
    max_overlap_iou: float = 0.2

    def fingerprint(self) -> str:
        blob = json.dumps(dict(asdict(self), version=_VERSION), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


DEFAULT_SPLITS = {
    "scratchdet_shapes_train": ShapesSpec(num_images=2000, seed=0),
    "scratchdet_shapes_val": ShapesSpec(num_images=200, seed=1),
}


def _cache_root() -> str:
    return os.environ.get(
        "SCRATCHDET_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "scratchdet"))


def shapes_dir(spec: ShapesSpec) -> str:
    return os.path.join(_cache_root(), f"shapes_{spec.fingerprint()}")


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    cells = int(rng.integers(3, 12))
    field = rng.uniform(40, 215, (cells, cells, 3)).astype(np.float32)
    img = cv2.resize(field, (size, size), interpolation=cv2.INTER_CUBIC)
    gray = img.mean(axis=2, keepdims=True)
    img = gray + rng.uniform(0.2, 0.6) * (img - gray)  # muted colours
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        theta, period = rng.uniform(0, math.pi), rng.uniform(4, 24)
        phase = (xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period
        img += rng.uniform(10, 35) * np.sin(phase)[..., None]
    img += rng.normal(0, rng.uniform(4, 14), img.shape)
    return img


def _shape_polygon(cls: str, cx: float, cy: float, side: float, angle: float) -> np.ndarray:
    if cls == "square":
        pts = [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]
    else:  # triangle, equilateral, unit side
        pts = [(0.0, -0.577), (0.5, 0.289), (-0.5, 0.289)]
    c, s = math.cos(angle), math.sin(angle)
    return np.array([(cx + side * (x * c - y * s), cy + side * (x * s + y * c)) for x, y in pts])


def _draw_object(rng, cls: str, size: int, length: float) -> Tuple[np.ndarray, np.ndarray]:
    """Returns a (size, size) bool mask of the object and its BGR colour."""
    scale = 8  # draw with sub-pixel precision
    mask = np.zeros((size, size), np.uint8)
    margin = length / 2
    cx, cy = rng.uniform(margin, size - margin, 2) if size > length else (size / 2, size / 2)
    if cls == "circle":
        cv2.circle(mask, (int(cx * scale), int(cy * scale)), int(length / 2 * scale), 1, -1,
                   cv2.LINE_8, 3)
    else:
        # side such that the shape's extent, whatever the rotation, is about `length`
        angle = rng.uniform(0, 2 * math.pi)
        poly = _shape_polygon(cls, 0, 0, 1.0, angle)
        extent = max(np.ptp(poly[:, 0]), np.ptp(poly[:, 1]))
        poly = _shape_polygon(cls, cx, cy, length / extent, angle)
        cv2.fillPoly(mask, [np.round(poly * scale).astype(np.int32)], 1, cv2.LINE_8, 3)
    lo, hi = _HUES[cls]
    hsv = np.uint8([[[rng.integers(lo, hi + 1), rng.integers(150, 256), rng.integers(130, 256)]]])
    color = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
    return mask.astype(bool), color


def _outline_polygon(mask: np.ndarray) -> np.ndarray:
    """(N, 2) float vertices (x, y), anticlockwise on screen, of the outline of ``mask``, a
    (H, W) bool mask whose foreground rows are consecutive and each one run of pixels
    (any convex shape OpenCV fills); in COCO coordinates, where pixel (i, j) covers
    [j, j + 1) x [i, i + 1). Vertices in the middle of a straight edge are dropped."""
    rows = np.nonzero(mask.any(axis=1))[0]
    sub = mask[rows]
    x0 = sub.argmax(axis=1)
    x1 = mask.shape[1] - sub[:, ::-1].argmax(axis=1)
    if np.any(np.diff(rows) != 1) or np.any(sub.sum(axis=1) != x1 - x0):
        raise ValueError("_outline_polygon: the mask is not one run of pixels per row")
    y = rows.astype(np.float64)
    left = np.stack([np.repeat(x0, 2), np.stack([y, y + 1], 1).ravel()], 1)
    right = np.stack([np.repeat(x1, 2), np.stack([y, y + 1], 1).ravel()], 1)[::-1]
    pts = np.concatenate([left, right]).astype(np.float64)
    pts = pts[np.any(pts != np.roll(pts, 1, axis=0), axis=1)]  # repeated vertices
    # the staircase is axis-aligned: a vertex is a corner where the direction changes
    d_in, d_out = pts - np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0) - pts
    turn = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
    return pts[turn != 0]


def _overlaps_little(box, objects, max_iou: float) -> bool:
    """Whether XYXY ``box`` overlaps each of the ``objects``' boxes by at most ``max_iou``."""
    if not objects:
        return True
    others = torch.tensor([b for _, b, _ in objects], dtype=torch.float64)  # (M, 4)
    return bool(box_iou(torch.tensor([box], dtype=torch.float64), others).max() <= max_iou)


def _make_image(rng, spec: ShapesSpec):
    size = spec.image_size
    img = _texture(rng, size)
    objects = []  # (class index, xyxy box, (N, 2) outline polygon)
    for _ in range(int(rng.integers(0, spec.max_objects + 1))):
        for _attempt in range(20):
            cls_idx = int(rng.integers(len(SHAPES_CLASSES)))
            length = math.exp(rng.uniform(math.log(spec.min_size), math.log(size / 2)))
            mask, color = _draw_object(rng, SHAPES_CLASSES[cls_idx], size, length)
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                continue
            box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
            if _overlaps_little(box, objects, spec.max_overlap_iou):
                shade = rng.normal(0, 6, (size, size, 1))  # a little texture on the object
                img[mask] = (color + shade)[mask]
                objects.append((cls_idx, box, _outline_polygon(mask)))
                break
    return np.clip(img, 0, 255).astype(np.uint8), objects


def generate_shapes(spec: ShapesSpec, out_dir: str) -> str:
    """
    Write ``out_dir/images/*.jpg`` and ``out_dir/annotations.json`` (COCO format)
    for ``spec``; deterministic in ``spec``. Written into a temporary directory and
    renamed into place, so a concurrent or interrupted run never leaves half a dataset.
    Returns the annotation file's path.
    """
    ann_file = os.path.join(out_dir, "annotations.json")
    if os.path.isfile(ann_file):
        return ann_file
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_shapes_", dir=parent)
    try:
        os.makedirs(os.path.join(tmp, "images"))
        rng = np.random.default_rng(spec.seed)
        images, annotations = [], []
        for i in range(spec.num_images):
            img, objects = _make_image(rng, spec)
            name = f"{i:06d}.jpg"
            cv2.imwrite(os.path.join(tmp, "images", name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append(dict(id=i + 1, file_name=name, height=img.shape[0], width=img.shape[1]))
            for cls_idx, (x0, y0, x1, y1), poly in objects:
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=i + 1, category_id=cls_idx + 1,
                    bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0), iscrowd=0,
                    segmentation=[poly.astype(np.int64).ravel().tolist()]))  # pixel corners
        categories = [dict(id=i + 1, name=n, supercategory="shape")
                      for i, n in enumerate(SHAPES_CLASSES)]
        with open(os.path.join(tmp, "annotations.json"), "w") as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories,
                           info=dict(description="scratchdet shapes", spec=asdict(spec))), f)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not os.path.isfile(ann_file):  # not a concurrent writer that won the race
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info(f"Generated {spec.num_images} shapes images into {out_dir}")
    return ann_file


def _load(name: str, spec: ShapesSpec, out_dir: str) -> List[Dict]:
    ann_file = generate_shapes(spec, out_dir)
    return load_coco_checked(ann_file, os.path.join(out_dir, "images"), name)


def register_shapes(name: str, spec: ShapesSpec) -> None:
    """Register ``name`` (generated on first ``DatasetCatalog.get``) with COCO metadata.

    The split's directory is fixed here, from ``$SCRATCHDET_CACHE`` as it is at
    registration (for the default splits: when ``scratchdet.data`` is imported). The
    metadata's ``json_file`` / ``image_root``, which ``COCOEvaluator`` reads, and the
    data that ``DatasetCatalog.get`` generates and loads are then the same files, even if
    the variable changes later in the process.
    """
    out_dir = shapes_dir(spec)
    DatasetCatalog.register(name, lambda: _load(name, spec, out_dir))
    MetadataCatalog.get(name).set(
        json_file=os.path.join(out_dir, "annotations.json"),
        image_root=os.path.join(out_dir, "images"),
        evaluator_type="coco",
        thing_classes=list(SHAPES_CLASSES),
        thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SHAPES_CLASSES))},
    )


def ensure_shapes(name: str) -> str:
    """Generate a registered default split now (if needed), into the directory its
    metadata names; returns its annotation file."""
    ann_file = MetadataCatalog.get(name).json_file
    return generate_shapes(DEFAULT_SPLITS[name], os.path.dirname(ann_file))


for _name, _spec in DEFAULT_SPLITS.items():
    if _name not in DatasetCatalog.list():
        register_shapes(_name, _spec)
