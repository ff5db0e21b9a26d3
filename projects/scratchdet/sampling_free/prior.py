"""The foreground prior of a dense head, counted from annotations only.

For every training image, the image size after the data mapper's resize gives the
feature-map sizes (padded size / stride), hence the model's anchors; the model's own
matcher labels them against the image's ground truth exactly as in training (crowd
boxes dropped and boxes clipped and filtered as Detectron2's mapper does). The counts

    N_f  foreground anchors, N_j  foreground anchors of class j,  N  non-ignored anchors

give the prior ``p = (N_f / N) / C`` used to initialise the classification bias and the
adaptive score thresholds. No image is decoded and no backbone is run.

Multi-scale training: every size the mapper can produce counts once per image (the
mapper samples them uniformly); for ``sample_style="range"`` eight evenly spaced sizes
stand for the range. Flips are ignored (they leave counts unchanged up to anchor-grid
symmetry). Each image is padded on its own to the backbone's size divisibility (in a
batch it would be padded to the largest image, which adds background anchors).
"""
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import detectron2.data.transforms as T
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils import comm

from ..data.ssd_augment import PhotometricDistort

__all__ = ["PriorCounts", "AnchorCounter", "resize_options", "count_dataset", "prior_fingerprint",
           "load_or_count", "PRIOR_VERSION"]

logger = logging.getLogger(__name__)
PRIOR_VERSION = 1


@dataclass
class PriorCounts:
    """Anchor counts of one head over a dataset (sums over images and size options)."""

    num_classes: int  # C of the head: number of foreground classes (1 for an RPN)
    num_foreground: int = 0
    num_valid: int = 0  # non-ignored anchors
    per_class: List[int] = field(default_factory=list)  # foreground anchors per gt class
    num_images: int = 0
    stderr: float = float("nan")  # standard error of `prior` over images
    seconds: float = 0.0

    @property
    def prior(self) -> float:
        """p = (N_f / N) / C, the per-class foreground probability."""
        if self.num_valid == 0:
            raise ValueError("no anchor was counted: empty dataset?")
        return self.num_foreground / self.num_valid / self.num_classes

    @property
    def per_class_prior(self) -> List[float]:
        """N_j / N for every ground-truth class j."""
        return [c / self.num_valid for c in self.per_class]

    def to_dict(self) -> Dict:
        d = asdict(self)
        d.update(prior=self.prior, per_class_prior=self.per_class_prior)
        return d


def resize_options(augmentations: Sequence, height: int, width: int) -> List[Tuple[int, int]]:
    """The (h, w) an image of ``height x width`` can have after ``augmentations``."""
    sizes = [(height, width)]
    for aug in augmentations:
        if isinstance(aug, T.ResizeShortestEdge):
            lengths = list(aug.short_edge_length)
            if aug.is_range:
                lo, hi = lengths
                lengths = sorted({int(round(x)) for x in np.linspace(lo, hi, 8)})
            sizes = [T.ResizeShortestEdge.get_output_shape(h, w, s, aug.max_size)
                     for h, w in sizes for s in lengths]
        elif isinstance(aug, T.Resize):
            sizes = [tuple(aug.shape)] * len(sizes)
        elif isinstance(aug, (T.RandomFlip, T.RandomBrightness, T.RandomContrast,
                              T.RandomSaturation, T.RandomLighting, T.NoOpTransform,
                              PhotometricDistort)):
            continue
        else:
            logger.warning("prior: augmentation %s is not modelled; counting without it",
                           type(aug).__name__)
    return [(int(h), int(w)) for h, w in sizes]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class AnchorCounter:
    """
    Labels one image's anchors with a head's anchor generator and matcher.

    Args:
        anchor_generator: a Detectron2 anchor generator (``strides`` and ``_grid_anchors``).
        matcher: the head's :class:`Matcher` (its thresholds and low-quality rule are used).
        num_classes: classes of the ground truth (for per-class counts).
        size_divisibility: the backbone's; images are padded to a multiple of it.
    """

    def __init__(self, anchor_generator, matcher, num_classes: int, size_divisibility: int = 0):
        self.anchor_generator = anchor_generator
        self.matcher = matcher
        self.num_classes = int(num_classes)
        self.size_divisibility = int(size_divisibility or 0)
        self._anchors: Dict[Tuple, Boxes] = {}

    def anchors_for(self, height: int, width: int) -> Boxes:
        d = self.size_divisibility
        if d > 1:
            height, width = _ceil_div(height, d) * d, _ceil_div(width, d) * d
        grid = tuple((_ceil_div(height, s), _ceil_div(width, s))
                     for s in self.anchor_generator.strides)
        if grid not in self._anchors:
            with torch.no_grad():
                per_level = self.anchor_generator._grid_anchors([list(g) for g in grid])
            # counted on the CPU, whatever device the model (and its cell anchors) is on
            self._anchors[grid] = Boxes(torch.cat(per_level).cpu())
        return self._anchors[grid]

    def count(self, boxes: np.ndarray, classes: np.ndarray, height: int, width: int):
        """
        boxes: (G, 4) XYXY in the (already resized) image; classes: (G,) contiguous ids.
        Returns (num_foreground, num_valid, per-class foreground counts as (C,) int64).
        """
        anchors = self.anchors_for(height, width)
        gt = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        gt.clip((height, width))
        keep = gt.nonempty()
        gt, cls = gt[keep], torch.as_tensor(classes, dtype=torch.int64).reshape(-1)[keep]
        with torch.no_grad():
            if len(gt):
                matched, labels = self.matcher(pairwise_iou(gt, anchors))
            else:  # no ground truth: every anchor is background, as in training
                matched, labels = None, torch.zeros(len(anchors), dtype=torch.int8)
        fg = labels == 1
        per_class = np.zeros(self.num_classes, dtype=np.int64)
        if len(gt) and fg.any():
            per_class += np.bincount(cls[matched[fg]].numpy(), minlength=self.num_classes)[
                : self.num_classes]
        return int(fg.sum()), int((labels != -1).sum()), per_class


def _image_gt(d: Dict) -> Tuple[np.ndarray, np.ndarray]:
    annos = [a for a in d.get("annotations", []) if a.get("iscrowd", 0) == 0]
    boxes = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos],
                     dtype=np.float64).reshape(-1, 4)
    classes = np.array([a["category_id"] for a in annos], dtype=np.int64)
    return boxes, classes


def count_dataset(dataset_dicts: Sequence[Dict], counter: AnchorCounter, augmentations=(),
                  head_classes: int = 1, progress: bool = True) -> PriorCounts:
    """
    Count over ``dataset_dicts`` (every rank counts its shard ``rank::world_size``; the
    integer counts are summed over ranks, so any number of processes gives the same
    result). ``head_classes`` is the C of the prior (1 for an RPN).
    """
    t0 = time.perf_counter()
    rank, world = comm.get_rank(), comm.get_world_size()
    shard = list(range(rank, len(dataset_dicts), world))
    per_image = np.zeros((len(shard), 2), dtype=np.int64)  # fg, valid per image
    per_class = np.zeros(counter.num_classes, dtype=np.int64)
    it = shard
    if progress and comm.is_main_process():
        from tqdm import tqdm

        it = tqdm(shard, desc="counting anchors for the prior", unit="img", mininterval=2)
    for row, idx in enumerate(it):
        d = dataset_dicts[idx]
        h, w = int(d["height"]), int(d["width"])
        boxes, classes = _image_gt(d)
        for nh, nw in resize_options(augmentations, h, w):
            scaled = boxes * np.array([nw / w, nh / h, nw / w, nh / h])
            fg, valid, pc = counter.count(scaled, classes, nh, nw)
            per_image[row] += (fg, valid)
            per_class += pc
    if world > 1:
        gathered = comm.all_gather((per_image, per_class))
        per_image = np.concatenate([g[0] for g in gathered])
        per_class = np.sum([g[1] for g in gathered], axis=0)
    counts = PriorCounts(
        num_classes=head_classes,
        num_foreground=int(per_image[:, 0].sum()),
        num_valid=int(per_image[:, 1].sum()),
        per_class=[int(x) for x in per_class],
        num_images=len(dataset_dicts),
    )
    counts.stderr = _ratio_stderr(per_image) / head_classes
    counts.seconds = time.perf_counter() - t0
    return counts


def _ratio_stderr(per_image: np.ndarray) -> float:
    """Delta-method standard error of sum(f) / sum(v) over images."""
    n = len(per_image)
    if n < 2:
        return float("nan")
    f, v = per_image[:, 0].astype(np.float64), per_image[:, 1].astype(np.float64)
    r = f.sum() / v.sum()
    return float(math.sqrt(n / (n - 1) * np.sum((f - r * v) ** 2)) / v.sum())


def _dicts_digest(dataset_dicts: Sequence[Dict]) -> str:
    """Digest of what the counts read from the data: sizes, boxes, classes, crowd flags."""
    h = hashlib.sha1()
    for d in dataset_dicts:
        h.update(f"{d['height']},{d['width']};".encode())
        for a in d.get("annotations", []):
            h.update(json.dumps([list(map(float, a["bbox"])), int(a["bbox_mode"]),
                                 a["category_id"], a.get("iscrowd", 0)]).encode())
        h.update(b"|")
    return h.hexdigest()


def prior_fingerprint(dataset_names, dataset_dicts, counter: AnchorCounter, augmentations,
                      head_classes: int, extra=None) -> str:
    """A key over everything the counts depend on."""
    anchors = [c.tolist() for c in counter.anchor_generator.cell_anchors]
    m = counter.matcher
    key = dict(
        version=PRIOR_VERSION,
        datasets=list(dataset_names) if not isinstance(dataset_names, str) else [dataset_names],
        data=_dicts_digest(dataset_dicts),
        cell_anchors=[[round(x, 4) for box in level for x in box] for level in anchors],
        strides=[int(s) for s in counter.anchor_generator.strides],
        offset=float(counter.anchor_generator.offset),
        matcher=dict(thresholds=[float(t) for t in m.thresholds], labels=list(m.labels),
                     low_quality=bool(m.allow_low_quality_matches)),
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


def _read_cache(path: str) -> Optional[PriorCounts]:
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            d = json.load(f)
        return PriorCounts(**{k: d[k] for k in ("num_classes", "num_foreground", "num_valid",
                                                 "per_class", "num_images", "stderr", "seconds")})
    except Exception as e:  # corrupt or foreign file: recount, never trust it
        logger.warning("prior cache %s is unreadable (%s); recomputing", path, e)
        return None


def _write_cache(path: str, counts: PriorCounts, fingerprint: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_prior_", dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as f:
        json.dump(dict(counts.to_dict(), fingerprint=fingerprint), f)
    os.replace(tmp, path)  # atomic: readers see the old file or the whole new one


def load_or_count(dataset_names, dataset_dicts, counter: AnchorCounter, augmentations=(),
                  head_classes: int = 1, use_cache: bool = True, progress: bool = True,
                  extra=None) -> Tuple[PriorCounts, bool]:
    """Counts from the fingerprinted cache when valid, else counted (and cached by rank 0).
    Returns (counts, from_cache)."""
    fp = prior_fingerprint(dataset_names, dataset_dicts, counter, augmentations, head_classes,
                           extra)
    path = _cache_path(fp)
    cached = _read_cache(path) if use_cache else None
    # every rank must take the same branch: use the cache only if every rank can read it
    hit = comm.all_gather(cached is not None)
    if use_cache and all(hit):
        return cached, True
    counts = count_dataset(dataset_dicts, counter, augmentations, head_classes, progress)
    if use_cache and comm.is_main_process():
        _write_cache(path, counts, fp)
    return counts, False
