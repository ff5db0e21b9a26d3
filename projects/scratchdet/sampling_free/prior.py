"""The foreground prior of a dense head, counted from annotations only.

For every training image, the image size after the data mapper's resize gives the
feature-map sizes (padded size / stride), hence the model's anchors; the model's own
matcher labels them against the image's ground truth exactly as in training (crowd
boxes dropped and boxes clipped and filtered as Detectron2's mapper does). The counts

    N_f  foreground anchors, N_j  foreground anchors of class j,  N  non-ignored anchors

give the prior ``p = (N_f / N) / C`` used to initialise the classification bias and the
adaptive score thresholds. No image is decoded and no backbone is run.

Multi-scale training: every size the mapper can produce counts once per image and per
way of producing it (the mapper samples its choices uniformly); for
``sample_style="range"`` eight evenly spaced sizes stand for the range. Flips are ignored (they leave counts unchanged up to anchor-grid
symmetry). Each image is padded on its own to the backbone's size divisibility (in a
batch it would be padded to the largest image, which adds background anchors).

Only the anchors near a box are matched (see :class:`AnchorCounter`), so counting costs
about as much as the boxes, not the anchors: coco_mini's 80 images at the R50-FPN
RetinaNet's six training scales (67M anchors) count in about 55 ms on one CPU thread.
A head with another assignment rule brings its own :class:`GridCounter` (FCOS: points).
"""
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

import detectron2.data.transforms as T
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils import comm

from ..data.coco import finite_box, nonfinite_box_error
from ..data.ssd_augment import PhotometricDistort
from ..io import write_json_atomic

__all__ = ["PriorCounts", "AnchorCounter", "resize_options", "count_dataset", "prior_fingerprint",
           "load_or_count", "PRIOR_VERSION"]

logger = logging.getLogger(__name__)
PRIOR_VERSION = 4  # 2: boxes filtered at the mapper's 1e-5, sizes deduplicated; 3: boxes
# of negative width or height ordered as the mapper orders them; 4: XYXY_ABS boxes kept in
# float64 as the mapper keeps them (were rounded to float32), one digest of the data


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
    fingerprint: str = ""  # prior_fingerprint of what was counted ("" if unknown)

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


def resize_options(augmentations: Sequence, height: int, width: int) -> List[Tuple[Tuple[int, int], int]]:
    """
    The (h, w) an image of ``height x width`` can have after ``augmentations``, each with
    its multiplicity: ``[((h, w), n), ...]``. A size the mapper can reach in n equally
    likely ways (e.g. ``ResizeShortestEdge(640)``, which Detectron2 stores as (640, 640))
    is listed once with weight n, and counted once at weight n.
    """
    return _sizes_after(_resize_steps(augmentations), height, width)


_SIZE_PRESERVING = (T.RandomFlip, T.RandomBrightness, T.RandomContrast, T.RandomSaturation,
                    T.RandomLighting, T.NoOpTransform, PhotometricDistort)


def _resize_steps(augmentations: Sequence) -> List[Tuple]:
    """The resizes of ``augmentations`` in plain numbers, read once (a LazyConfig's
    augmentations hold OmegaConf lists): ``("short", lengths, max_size)`` or
    ``("fixed", (h, w))``. An augmentation not modelled is logged and skipped."""
    steps = []
    for aug in augmentations:
        if isinstance(aug, T.ResizeShortestEdge):
            lengths = [int(x) for x in aug.short_edge_length]
            if aug.is_range:
                lo, hi = lengths
                lengths = sorted({int(round(x)) for x in np.linspace(lo, hi, 8)})
            steps.append(("short", lengths, aug.max_size))
        elif isinstance(aug, T.Resize):
            steps.append(("fixed", tuple(int(x) for x in aug.shape)))
        elif not isinstance(aug, _SIZE_PRESERVING):
            logger.warning("prior: augmentation %s is not modelled; counting without it",
                           type(aug).__name__)
    return steps


def _sizes_after(steps: Sequence[Tuple], height: int, width: int) -> List[Tuple[Tuple[int, int], int]]:
    """:func:`resize_options` of :func:`_resize_steps`."""
    sizes = {(height, width): 1}
    for step in steps:
        if step[0] == "short":
            new: Dict[Tuple[int, int], int] = {}
            for (h, w), n in sizes.items():
                for s in step[1]:
                    key = T.ResizeShortestEdge.get_output_shape(h, w, s, step[2])
                    new[key] = new.get(key, 0) + n
            sizes = new
        else:
            sizes = {step[1]: sum(sizes.values())}
    return [((int(h), int(w)), int(n)) for (h, w), n in sizes.items()]


@dataclass
class _Item:
    """One image at one size: clipped non-empty gt boxes (G, 4) float32, classes (G,)."""

    boxes: np.ndarray
    classes: np.ndarray
    grid: Tuple[Tuple[int, int], ...]  # (H_l, W_l) per level, after padding
    weight: int = 1


@dataclass
class _Batch:
    """
    n items in flat arrays: the boxes (G, 4) float32 (clipped, non-empty) and classes
    (G,) int64 of all items, item after item; ``counts`` (n,) boxes per item; ``grids``
    (n, L, 2) int64 grid sizes per item and level; ``weights`` (n,) int64.
    """

    boxes: np.ndarray
    classes: np.ndarray
    counts: np.ndarray
    grids: np.ndarray
    weights: np.ndarray

    @classmethod
    def of(cls, items: Sequence[_Item], levels: int) -> "_Batch":
        return cls(np.concatenate([it.boxes for it in items] + [np.zeros((0, 4), np.float32)]),
                   np.concatenate([it.classes for it in items] + [np.zeros(0, np.int64)]),
                   np.array([len(it.boxes) for it in items], np.int64),
                   np.array([it.grid for it in items], np.int64).reshape(len(items), levels, 2),
                   np.array([it.weight for it in items], np.int64))

    def item(self, i: int) -> _Item:
        start = int(self.counts[:i].sum())
        end = start + int(self.counts[i])
        return _Item(self.boxes[start:end], self.classes[start:end],
                     tuple((int(h), int(w)) for h, w in self.grids[i]), int(self.weights[i]))


class GridCounter:
    """Grids (padded to ``size_divisibility``) and batching shared by counters; a subclass
    labels locations with its head's rule (:meth:`count_batch`, :meth:`fingerprint_fields`)."""

    def __init__(self, anchor_generator, num_classes: int, size_divisibility: int = 0):
        self.anchor_generator = anchor_generator
        self.num_classes = int(num_classes)
        self.size_divisibility = int(size_divisibility or 0)
        self._strides = [int(s) for s in anchor_generator.strides]
        self.pairs = 0  # (box, location) pairs looked at so far by the sparse path

    # -- geometry -------------------------------------------------------------------------
    def grid_sizes(self, height: int, width: int) -> Tuple[Tuple[int, int], ...]:
        """(H_l, W_l) of every level for an image of ``height x width`` (padded first)."""
        grid = self._grids(np.array([height], np.int64), np.array([width], np.int64))[0]
        return tuple((int(h), int(w)) for h, w in grid)

    def _grids(self, heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
        """:meth:`grid_sizes` of n images at once: (n, L, 2) int64."""
        d = self.size_divisibility
        if d > 1:
            heights, widths = -(-heights // d) * d, -(-widths // d) * d
        s = np.array(self._strides, np.int64)
        return np.stack([-(-heights[:, None] // s), -(-widths[:, None] // s)], -1)

    def make_item(self, boxes, classes, height: int, width: int, weight: int = 1) -> _Item:
        """An image of ``height x width`` (after resizing) with its gt ``boxes`` (G, 4)
        XYXY in that size and their ``classes`` (G,): :meth:`image_batch` of it at its own
        size (a scale of exactly 1)."""
        size = np.array([[height, width, weight]], np.int64)
        return self.image_batch([(boxes, classes, height, width, size)])[0].item(0)

    def count_items(self, items: Sequence[_Item]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """
        Counts of many (image, size) items at once.

        Returns:
            fg: (n,) int64 foreground anchors per item; valid: (n,) int64 non-ignored
            anchors per item (both unweighted); per_class: (C,) int64 foreground anchors
            per gt class summed over items, each item times its ``weight``.
        """
        return self.count_batch(_Batch.of(items, len(self._strides)))

    def image_batch(self, images: Sequence[Tuple]) -> Tuple[_Batch, np.ndarray]:
        """
        The items of many images, each image at each of its sizes: the boxes scaled to
        the size (float64), then as training sees them: float32 and clipped to the image
        (the mapper's ``transform_instance_annotations``), and only those wider and taller
        than 1e-5 (its ``filter_empty_instances``).

        Args:
            images: per image ``(boxes, classes, height, width, sizes)``: boxes (G, 4)
                float64 XYXY at ``height x width``, classes (G,), and ``sizes`` (S, 3)
                int64 rows ``(h, w, weight)``, the sizes it is resized to.
        Returns:
            the batch of all (image, size) items, and (n,) the image of each item.
        """
        per_image = np.array([len(im[4]) for im in images], np.int64)
        sizes = np.concatenate([im[4] for im in images]).reshape(-1, 3)
        image_of = np.repeat(np.arange(len(images)), per_image)
        orig = np.array([(im[2], im[3]) for im in images], np.float64).reshape(-1, 2)
        num_gt = np.array([len(im[0]) for im in images], np.int64)
        boxes = np.concatenate([np.asarray(im[0], np.float64).reshape(-1, 4) for im in images])
        classes = np.concatenate([np.asarray(im[1], np.int64).reshape(-1) for im in images])
        # every box of an image, once per size of the image
        per_item = num_gt[image_of]
        item = np.repeat(np.arange(len(sizes)), per_item)
        src = (np.cumsum(num_gt) - num_gt)[image_of][item] + _ranks(per_item)
        h, w = sizes[:, 0], sizes[:, 1]
        sx, sy = w / orig[image_of, 1], h / orig[image_of, 0]
        b = (boxes[src] * np.stack([sx, sy, sx, sy], 1)[item]).astype(np.float32)
        b[:, 0::2] = b[:, 0::2].clip(0, w.astype(np.float32)[item, None])
        b[:, 1::2] = b[:, 1::2].clip(0, h.astype(np.float32)[item, None])
        keep = ((b[:, 2] - b[:, 0]) > 1e-5) & ((b[:, 3] - b[:, 1]) > 1e-5)
        batch = _Batch(b[keep], classes[src][keep],
                       np.bincount(item[keep], minlength=len(sizes)).astype(np.int64),
                       self._grids(h, w), sizes[:, 2].copy())
        return batch, image_of


class AnchorCounter(GridCounter):
    """
    Labels anchors with a head's anchor generator and matcher, as in training.

    Two paths give the same counts (a test checks them against each other on coco_mini):

    - :meth:`count` (dense, the reference): builds all the image's anchors and runs the
      head's :class:`Matcher` on the full ``pairwise_iou`` matrix.
    - :meth:`count_items` / :meth:`count_batch` (sparse; :func:`count_dataset` builds
      its batches with :meth:`image_batch`): for each gt box, each cell anchor and each
      grid row it computes the grid positions whose anchor *can* reach the matcher's
      lowest threshold ``t`` (``IoU >= t`` needs the intersection
      ``>= t (A_a + A_g) / (1 + t)``, which bounds the centre offsets), and only those
      anchors get an IoU (float32, bit-identical to the entries of Detectron2's
      ``pairwise_iou``). Every other anchor has IoU < t with every box, so it is
      background. For the low-quality rule, a box whose best window IoU ``m`` is below
      ``t`` widens its window to IoU >= m, which holds all its best (tied) anchors. The
      Matcher's thresholds, labels and low-quality rule are then applied over these
      (box, anchor) pairs, grouped by anchor (:func:`_group_pairs`); images where that
      argument fails (a box with no overlapping anchor) fall back to the dense path. It
      runs for Detectron2's ``Matcher`` with background below the lowest threshold and
      grid anchor generators (``DefaultAnchorGenerator`` and subclasses); anything else
      uses the dense path.

    Args:
        anchor_generator: a Detectron2 anchor generator (``strides``, ``offset``,
            ``cell_anchors`` and ``_grid_anchors``).
        matcher: the head's :class:`Matcher` (its thresholds and low-quality rule are used).
        num_classes: classes of the ground truth (for per-class counts).
        size_divisibility: the backbone's; images are padded to a multiple of it.
    """

    _PROBES = 6  # cell anchors tried per box for the lower bound of its best IoU

    def __init__(self, anchor_generator, matcher, num_classes: int, size_divisibility: int = 0):
        super().__init__(anchor_generator, num_classes, size_divisibility)
        self.matcher = matcher
        self.sparse = self._sparse_supported()
        if self.sparse:
            self._cells = [c.detach().cpu().numpy().astype(np.float32)
                           for c in anchor_generator.cell_anchors]
            self._t_low = float(matcher.thresholds[1])
            # plain numbers (a LazyConfig-built Matcher may hold OmegaConf lists)
            self._inner_thresholds = [np.float32(t) for t in list(matcher.thresholds)[1:-1]]
            self._interval_labels = np.array([int(x) for x in matcher.labels], np.int8)
            # the cell anchors of all levels in one table, with their level's geometry
            off = float(anchor_generator.offset)
            self._cell_table = np.concatenate(self._cells)
            self._cell_level = np.concatenate([np.full(len(c), i) for i, c in enumerate(self._cells)])
            self._cell_index = np.concatenate([np.arange(len(c)) for c in self._cells])
            self._cell_count = np.array([len(self._cells[lv]) for lv in self._cell_level])
            self._cell_stride = np.array([self._strides[lv] for lv in self._cell_level], np.float64)
            self._cell_base = off * self._cell_stride
            self._cells_per_level = np.array([len(c) for c in self._cells], np.int64)

    def _sparse_supported(self) -> bool:
        from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
        from detectron2.modeling.matcher import Matcher

        m = self.matcher
        return (isinstance(self.anchor_generator, DefaultAnchorGenerator)
                and all(float(s).is_integer() for s in self.anchor_generator.strides)
                and type(m) is Matcher and len(m.thresholds) >= 3 and m.labels[0] == 0
                and 0 < float(m.thresholds[1]) <= 1)

    # -- counting ------------------------------------------------------------------------
    def count(self, boxes: np.ndarray, classes: np.ndarray, height: int, width: int):
        """
        The dense reference for one image. boxes: (G, 4) XYXY in the (already resized)
        image; classes: (G,) contiguous ids. Returns (num_foreground, num_valid, per-class
        foreground counts as (C,) int64).
        """
        return self._dense_item(self.make_item(boxes, classes, height, width))

    def fingerprint_fields(self) -> Dict:
        """The anchors and the matcher, as :func:`prior_fingerprint` keys them."""
        anchors = [c.tolist() for c in self.anchor_generator.cell_anchors]
        m = self.matcher
        return dict(
            cell_anchors=[[round(x, 4) for box in level for x in box] for level in anchors],
            strides=[int(s) for s in self.anchor_generator.strides],
            offset=float(self.anchor_generator.offset),
            matcher=dict(thresholds=[float(t) for t in m.thresholds], labels=list(m.labels),
                         low_quality=bool(m.allow_low_quality_matches)))

    def count_batch(self, batch: _Batch) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`count_items` of a :class:`_Batch`."""
        n = len(batch.counts)
        fg = np.zeros(n, np.int64)
        per_class = np.zeros(self.num_classes, np.int64)
        if not self.sparse:
            valid = np.zeros(n, np.int64)
            for i in range(n):
                fg[i], valid[i], pc = self._dense_item(batch.item(i))
                per_class += batch.weights[i] * pc
            return fg, valid, per_class
        valid = (batch.grids[..., 0] * batch.grids[..., 1] * self._cells_per_level).sum(1)
        if len(batch.boxes):
            f, ign, pc, bad = self._sparse(batch)
            fg[:], valid[:] = f, valid - ign
            per_class += pc
            for i in bad:  # a box overlapping no anchor: Detectron2's rule needs all anchors
                fg[i], valid[i], pc_i = self._dense_item(batch.item(i))
                per_class += batch.weights[i] * pc_i
        return fg, valid, per_class

    def _dense_item(self, it: _Item):
        """:meth:`count` of an item (its boxes are already clipped and non-empty)."""
        with torch.no_grad():  # on the CPU, whatever device the model's cell anchors are on
            anchors = Boxes(torch.cat(self.anchor_generator._grid_anchors(
                [list(g) for g in it.grid])).cpu())
        with torch.no_grad():
            if len(it.boxes):
                gt = Boxes(torch.from_numpy(np.ascontiguousarray(it.boxes)))
                matched, labels = self.matcher(pairwise_iou(gt, anchors))
            else:
                matched, labels = None, torch.zeros(len(anchors), dtype=torch.int8)
        fg = labels == 1
        per_class = np.zeros(self.num_classes, dtype=np.int64)
        if len(it.boxes) and fg.any():
            per_class += np.bincount(it.classes[matched[fg].numpy()],
                                     minlength=self.num_classes)[: self.num_classes]
        return int(fg.sum()), int((labels != -1).sum()), per_class

    def _cell_geometry(self, grids, item_of_gt):
        """Per (box, cell anchor of any level): the cell's float64 geometry and the grid."""
        c = self._cell_table.astype(np.float64)
        aw, ah = (c[:, 2] - c[:, 0])[None], (c[:, 3] - c[:, 1])[None]
        acx, acy = ((c[:, 0] + c[:, 2]) / 2)[None], ((c[:, 1] + c[:, 3]) / 2)[None]
        g = grids[item_of_gt][:, self._cell_level]  # (G, cells, 2)
        return aw, ah, acx, acy, g[..., 0], g[..., 1]

    def _windows(self, boxes, sel, thresholds, item_of_gt, grids, level_start) -> "_Pairs":
        """
        Every pair of a box of ``sel`` and an anchor whose IoU reaches the box's threshold.

        ``IoU >= t`` needs the intersection ``I >= t (A_a + A_g) / (1 + t)``. Per (box,
        cell anchor), centred boxes overlap the most, ``min(w_a, w_g) min(h_a, h_g)``: a
        combination below ``I`` is skipped. Per combination, ``I`` bounds the rows
        (vertical centre offsets, with the widest horizontal overlap ``min(w_a, w_g)``);
        per row, whose vertical overlap ``o_y`` is then known, it bounds the horizontal
        offsets by ``I / o_y``. Both bounds are widened by 1e-3 of a cell for float32
        rounding. The IoU of every anchor in these bounds is then computed exactly, and
        the pairs below ``t`` are dropped.

        The IoU is Detectron2's ``pairwise_iou`` entry, bit for bit (see :meth:`_iou`):
        the float32 anchor corners are the sums ``shift + cell anchor`` of
        ``_grid_anchors`` (the shifts are exact: integer and half-integer multiples), and
        the operations are ``pairwise_iou``'s, in its order. The vertical ones are done
        once per row.

        Args:
            boxes: (G, 4) float32 gt boxes; sel: (S,) the boxes to pair; thresholds: (S,)
                float64, one per box of ``sel``.
            item_of_gt: (G,) item of each box; grids: (n, L, 2) grid sizes per item;
            level_start: (n, L) index of each level's first anchor in its item.
        """
        b32 = boxes[sel]
        b = b32.astype(np.float64)
        cols32 = [np.ascontiguousarray(x) for x in b32.T]  # x1, y1, x2, y2
        gw, gh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        gcx, gcy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        tt = np.asarray(thresholds, np.float64)
        c = self._cell_table.astype(np.float64)
        aw, ah = c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]
        acx, acy = (c[:, 0] + c[:, 2]) / 2, (c[:, 1] + c[:, 3]) / 2
        # (box, cell) combinations that can reach t at all (1e-4 spare for float32)
        need = tt[:, None] / (1 + tt[:, None]) * (aw * ah + (gw * gh)[:, None])
        most = np.minimum(aw, gw[:, None]) * np.minimum(ah, gh[:, None])
        g, cell = np.divmod(np.flatnonzero(most * (1 + 1e-4) >= need), len(c))
        need = need[g, cell]
        aw, ah, gw, gh = aw[cell], ah[cell], gw[g], gh[g]
        s, base = self._cell_stride[cell], self._cell_base[cell]
        level, it = self._cell_level[cell], item_of_gt[sel][g]
        eps = 1e-3  # of a cell, for rounding
        dy = (ah + gh) / 2 - need / np.minimum(aw, gw)  # the largest vertical offset
        y0 = gcy[g] - acy[cell] - base
        y_lo = np.maximum(np.ceil((y0 - dy) / s - eps), 0).astype(np.int64)
        y_hi = np.minimum(np.floor((y0 + dy) / s + eps),
                          grids[it, level, 0] - 1).astype(np.int64)
        ny = (y_hi - y_lo + 1).clip(min=0)
        # per combination, what its rows need
        half_h, min_h = (ah + gh) / 2, np.minimum(ah, gh)
        half_w, min_w = (aw + gw) / 2, np.minimum(aw, gw)
        x0 = gcx[g] - acx[cell] - base
        width = grids[it, level, 1]
        step = self._cell_count[cell]
        row_base = level_start[it, level] + self._cell_index[cell]

        # rows: one per (box, cell, grid row) in the vertical bound
        combo = np.repeat(np.arange(len(ny)), ny)  # the (box, cell) of each row
        iy = y_lo[combo] + _ranks(ny)
        s_r = s[combo]
        overlap_y = np.minimum(min_h[combo], half_h[combo] - np.abs(y0[combo] - iy * s_r)) \
            + eps * s_r
        need_x = need[combo] / np.maximum(overlap_y, 1e-300)
        dx = half_w[combo] - need_x  # the row's largest horizontal offset
        row_ok = (overlap_y > 0) & (need_x <= min_w[combo] + eps * s_r)
        x0_r = x0[combo]
        x_lo = np.maximum(np.ceil((x0_r - dx) / s_r - eps), 0).astype(np.int64)
        x_hi = np.minimum(np.floor((x0_r + dx) / s_r + eps),
                          width[combo] - 1).astype(np.int64)
        nx = np.where(row_ok, x_hi - x_lo + 1, 0).clip(min=0)
        # the row's vertical IoU terms (float32): the anchors' top and bottom, the
        # overlap with the box, the anchor height, the box's corners and area
        cell_r, g_r = cell[combo], g[combo]
        cells = self._cell_table
        sy = (base[combo] + iy * s_r).astype(np.float32)
        ay1, ay2 = sy + cells[cell_r, 1], sy + cells[cell_r, 3]
        gx1, gy1, gx2, gy2 = (x[g_r] for x in cols32)
        h = np.minimum(gy2, ay2) - np.maximum(gy1, ay1)
        np.maximum(h, 0, out=h)
        a_h = ay2 - ay1
        area_g = (gx2 - gx1) * (gy2 - gy1)

        # pairs: one per anchor of each row's horizontal bound
        row = np.repeat(np.arange(len(nx)), nx)
        ix = np.arange(len(row)) + (x_lo - (np.cumsum(nx) - nx))[row]
        sx = (base[combo][row] + ix * s_r[row]).astype(np.float32)
        ax1, ax2 = sx + cells[cell_r, 0][row], sx + cells[cell_r, 2][row]
        w = np.minimum(gx2[row], ax2) - np.maximum(gx1[row], ax1)
        np.maximum(w, 0, out=w)
        inter = w * h[row]
        union = area_g[row] + (ax2 - ax1) * a_h[row]
        union -= inter
        iou = np.divide(inter, union, out=inter)
        kept = np.flatnonzero(iou >= tt[g_r][row])
        rk = row[kept]
        step_r = step[combo]
        flat = (row_base[combo] + iy * width[combo] * step_r)[rk] + ix[kept] * step_r[rk]
        return _Pairs(sel[g_r[rk]], it[combo][rk], flat, iou[kept], rk, ix[kept], cell_r, iy)

    def _anchor_boxes(self, cell, ix, iy) -> np.ndarray:
        """(k, 4) float32 anchors of cells ``cell`` (rows of the cell table) at grid
        positions (ix, iy): the float32 sums of Detectron2's ``_grid_anchors`` (the grid
        offsets are exact: integer and half-integer multiples, tested against it)."""
        s, base = self._cell_stride[cell], self._cell_base[cell]
        sx = (base + ix * s).astype(np.float32)
        sy = (base + iy * s).astype(np.float32)
        boxes = self._cell_table[cell]
        boxes[:, 0] += sx
        boxes[:, 1] += sy
        boxes[:, 2] += sx
        boxes[:, 3] += sy
        return boxes

    def _nearest_iou(self, boxes, item_of_gt, grids):
        """(G,) a lower bound of each box's best IoU: the best over the anchors (every
        level and cell anchor) whose centre is nearest to the box's centre."""
        b = boxes.astype(np.float64)
        gcx, gcy = ((b[:, 0] + b[:, 2]) / 2)[:, None], ((b[:, 1] + b[:, 3]) / 2)[:, None]
        aw, ah, acx, acy, H, W = self._cell_geometry(grids, item_of_gt)
        # any subset of anchors gives a lower bound; the cells closest in width and
        # height give a tight one
        n = min(self._PROBES, aw.shape[1])
        gw, gh = (b[:, 2] - b[:, 0])[:, None], (b[:, 3] - b[:, 1])[:, None]
        misfit = np.abs(np.log(aw / gw)) + np.abs(np.log(ah / gh))
        cell = np.argpartition(misfit, n - 1, axis=1)[:, :n] if n < aw.shape[1] else \
            np.broadcast_to(np.arange(n), misfit.shape)
        rows = np.arange(len(b))[:, None]
        s, base = self._cell_stride[cell], self._cell_base[cell]
        ix = np.clip(np.rint((gcx - acx[0, cell] - base) / s), 0, W[rows, cell] - 1)
        iy = np.clip(np.rint((gcy - acy[0, cell] - base) / s), 0, H[rows, cell] - 1)
        g = np.repeat(np.arange(len(boxes)), n)
        iou = self._iou(boxes[g], self._anchor_boxes(cell.ravel(), ix.ravel().astype(np.int64),
                                                     iy.ravel().astype(np.int64)))
        return iou.reshape(len(b), n).max(1)

    @staticmethod
    def _iou(gt: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        """Element-wise IoU of (k, 4) float32 pairs, with the float32 operations of
        Detectron2's ``pairwise_iou`` in its order (areas; intersection clamped at 0;
        ``inter / (area_gt + area_anchor - inter)``), so that every value equals its
        ``pairwise_iou`` entry bit for bit (a test checks it)."""
        gx1, gy1, gx2, gy2 = gt.T
        ax1, ay1, ax2, ay2 = anchors.T
        w = np.minimum(gx2, ax2) - np.maximum(gx1, ax1)
        h = np.minimum(gy2, ay2) - np.maximum(gy1, ay1)
        inter = np.maximum(w, 0, out=w)
        inter *= np.maximum(h, 0, out=h)
        union = (gx2 - gx1) * (gy2 - gy1)
        union += (ax2 - ax1) * (ay2 - ay1)
        union -= inter
        return np.divide(inter, union, out=inter)

    def _sparse(self, batch: _Batch):
        """
        Counts of a batch's items. Returns (fg, ignored per item, per class sum, items that
        need the dense path); the sums leave those items out.
        """
        m = self.matcher
        grids, counts, boxes, classes = batch.grids, batch.counts, batch.boxes, batch.classes
        n = len(counts)
        sizes = grids[:, :, 0] * grids[:, :, 1] * self._cells_per_level
        level_start = np.cumsum(sizes, axis=1) - sizes
        item_of_gt = np.repeat(np.arange(n), counts)

        # Each box's window: every anchor of IoU >= the lowest threshold. A pair below its
        # box's threshold changes no label and no match (see below): it is dropped.
        t_low = self._t_low * (1 - 1e-5)
        parts = [self._windows(boxes, np.arange(len(boxes)), np.full(len(boxes), t_low),
                               item_of_gt, grids, level_start)]
        if m.allow_low_quality_matches:
            # a box with no anchor at the lowest threshold: its window widens to IoU >= a
            # lower bound of its best IoU (its best anchors, ties included, are then in it)
            reached = np.zeros(len(boxes), bool)
            reached[parts[0].box] = True
            low = np.flatnonzero(~reached)
            if len(low):
                thr = np.minimum(self._t_low, self._nearest_iou(boxes[low], item_of_gt[low],
                                                                 grids)) * (1 - 1e-5)
                parts.append(self._windows(boxes, low, thr, item_of_gt, grids, level_start))
        g, it, flat, iou = (np.concatenate(x) if len(parts) > 1 else x[0]
                            for x in zip(*(p[:4] for p in parts)))
        self.pairs += len(g)
        # group the pairs by anchor, boxes in order within an anchor
        order, new = _group_pairs(it * (int(sizes.sum(1).max()) + 1) + flat, g, len(boxes))
        g, iou, it = g[order], iou[order], it[order]
        starts = np.flatnonzero(new)
        cand = np.cumsum(new) - 1  # candidate anchor of each pair
        cand_item = it[starts]
        # An anchor outside a box's window has IoU < that box's threshold <= the lowest
        # threshold, so its column maximum and first arg-maximum are right whenever they
        # can matter (>= the lowest threshold); for the others the label is background.
        col_max, matched = _grouped_max(iou, starts, cand, g)

        # the Matcher's rule on these values: label l where lo <= value < hi, the
        # thresholds rounded to float32 as torch compares a float32 tensor with them
        interval = np.zeros(len(col_max), np.intp)
        for t in self._inner_thresholds:  # ascending (Matcher checks it)
            interval += col_max >= t
        labels = self._interval_labels[interval]
        gt_max = np.zeros(len(boxes), np.float32)
        np.maximum.at(gt_max, g, iou)
        if m.allow_low_quality_matches:
            promoted = np.unique(cand[iou == gt_max[g]])
            labels[promoted] = 1
            # an anchor promoted below the lowest threshold is matched to its arg-maximum
            # over all the item's boxes, some of which may not hold it in their window
            redo = promoted[col_max[promoted] < self._t_low]
            if len(redo):
                matched[redo] = self._argmax_all(
                    redo, cand_item, self._pair_anchors(parts, order[starts[redo]]), boxes,
                    counts)
        bad = np.unique(item_of_gt[gt_max <= 0])  # a box that overlaps no anchor at all
        keep = ~np.isin(cand_item, bad)
        is_fg = (labels == 1) & keep
        fg = np.bincount(cand_item[is_fg], minlength=n)
        ign = np.bincount(cand_item[(labels == -1) & keep], minlength=n)
        fg_cls = classes[matched[is_fg]]
        known = fg_cls < self.num_classes  # as the dense path's bincount(...)[:C]
        per_class = np.bincount(fg_cls[known], batch.weights[cand_item[is_fg]][known],
                                minlength=self.num_classes)[: self.num_classes]
        return fg, ign, per_class.astype(np.int64), [int(j) for j in bad]

    def _pair_anchors(self, parts: Sequence["_Pairs"], pairs: np.ndarray) -> np.ndarray:
        """(k, 4) the anchor boxes of ``pairs``, indices into the concatenated ``parts``."""
        out = np.empty((len(pairs), 4), np.float32)
        offset = 0
        for part in parts:
            mine = (pairs >= offset) & (pairs < offset + len(part.box))
            p = pairs[mine] - offset
            out[mine] = self._anchor_boxes(part.cell[part.row[p]], part.ix[p], part.iy[part.row[p]])
            offset += len(part.box)
        return out

    def _argmax_all(self, cands, cand_item, cand_boxes, boxes, counts):
        """The first box of maximal IoU among all boxes of each candidate's item, for
        candidate anchors ``cands`` whose boxes are ``cand_boxes`` (len(cands), 4)."""
        gt_start = np.cumsum(counts) - counts
        per = counts[cand_item[cands]]
        starts = np.cumsum(per) - per
        pc = np.repeat(np.arange(len(cands)), per)
        pg = gt_start[cand_item[cands]][pc] + _ranks(per)
        iou = self._iou(boxes[pg], cand_boxes[pc])
        return _grouped_max(iou, starts, pc, pg)[1]


class _Pairs(NamedTuple):
    """(box, anchor) pairs of :meth:`AnchorCounter._windows`, with what rebuilds their
    anchor boxes: (k,) each of ``box``, ``item``, ``flat`` (anchor index within the
    item), ``iou``, ``row`` and ``ix`` (grid column); per row ``cell`` and ``iy``."""

    box: np.ndarray
    item: np.ndarray
    flat: np.ndarray
    iou: np.ndarray
    row: np.ndarray
    ix: np.ndarray
    cell: np.ndarray
    iy: np.ndarray


def _ranks(lengths: np.ndarray) -> np.ndarray:
    """0, 1, ..., k - 1 for every k of ``lengths``, concatenated."""
    return np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _group_pairs(anchor: np.ndarray, box: np.ndarray, num_boxes: int):
    """
    An order of (box, anchor) pairs that puts the pairs of each anchor together, boxes
    ascending within an anchor, and (P,) bool: the first pair of each anchor in it.

    Most anchors are near one box only. A hash table of 8P to 16P slots (each pair writes its
    index to its anchor's slot; a slot then holds one of its writers) finds the pairs
    whose slot more than one pair wrote to (the same anchor or a collision): only those
    are sorted; every other pair is an anchor of its own.

    Args:
        anchor: (P,) int64 >= 0, the anchor of each pair; box: (P,) its box, < num_boxes.
    """
    n = len(anchor)
    bits = max(16, (8 * n).bit_length())
    slot = ((anchor.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
            >> np.uint64(64 - bits)).astype(np.intp)  # Fibonacci hashing
    table = np.empty(1 << bits, np.int32)
    pair = np.arange(n, dtype=np.int32)
    table[slot] = pair
    crowded = np.zeros(1 << bits, bool)
    crowded[slot[table[slot] != pair]] = True
    many = crowded[slot]
    alone, rest = np.flatnonzero(~many), np.flatnonzero(many)
    rest = rest[np.argsort(anchor[rest] * num_boxes + box[rest])]
    first = np.ones(n, bool)
    first[len(alone) + 1:] = anchor[rest[1:]] != anchor[rest[:-1]]
    return np.concatenate([alone, rest]), first


def _grouped_max(values, starts, group, ids):
    """
    For pairs sorted into contiguous groups (``group``: the group of each pair, groups
    beginning at ``starts``): each group's maximum of ``values`` and the ``ids`` of its
    first pair at that maximum (``torch.max(dim)``'s choice among ties).
    """
    if not len(values):
        return np.zeros(0, values.dtype), np.zeros(0, ids.dtype)
    best = np.maximum.reduceat(values, starts)
    at_max = np.flatnonzero(values == best[group])
    g = group[at_max]  # ascending: the first pair of each group at its maximum starts a run
    first = np.ones(len(g), bool)
    first[1:] = g[1:] != g[:-1]
    return best, ids[at_max[first]]


_NUMBERS = (int, float)


def _image_gt(d: Dict) -> Tuple[np.ndarray, np.ndarray]:
    """
    (G, 4) XYXY boxes (float64) and (G,) classes of the non-crowd annotations, with the
    arithmetic of Detectron2's mapper, whose ``BoxMode.convert`` of one annotation's
    list gives XYXY_ABS boxes unchanged and computes XYWH_ABS ones in the dtype of
    ``torch.tensor(bbox)``: float32 for Python floats (and for Python ints below 2**24,
    where float32 is exact as int64 is). Those common cases are converted for all boxes
    at once; any other (other modes or number types) box by box with ``BoxMode.convert``
    itself. A box of negative width or height has its corners ordered, as the mapper's
    ``apply_box`` (min and max of the transformed corners) orders them: training sees
    it, so it is counted. A box that is not finite raises ``ValueError``
    (:func:`~scratchdet.data.coco.nonfinite_box_error`).
    """
    boxes, classes, _ = _images_gt([d])
    return boxes, classes


def _images_gt(dicts: Sequence[Dict]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_image_gt` of many images at once: their boxes (G, 4) and classes (G,),
    image after image, and (k,) the number of each image's boxes."""
    per_image = [[a for a in d.get("annotations", ()) if a.get("iscrowd", 0) == 0]
                 for d in dicts]
    num = np.array([len(x) for x in per_image], np.int64)
    annos = [a for x in per_image for a in x]
    classes = np.array([a["category_id"] for a in annos], dtype=np.int64)
    if not annos:
        return np.zeros((0, 4)), classes, num
    bboxes = [a["bbox"] for a in annos]
    xywh = np.array([a["bbox_mode"] == BoxMode.XYWH_ABS for a in annos])
    plain = (all(a["bbox_mode"] in (BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in annos)
             and all(type(b) in (list, tuple) and len(b) == 4 for b in bboxes)
             and all(type(x) in _NUMBERS for b in bboxes for x in b))
    boxes = np.array(bboxes, np.float64) if plain else None
    if not (np.isfinite(boxes).all() if plain else all(finite_box(b) for b in bboxes)):
        raise nonfinite_box_error(dicts)
    if plain and xywh.any() and np.abs(boxes[xywh]).max() < 2 ** 24:
        f = boxes[xywh].astype(np.float32)
        f[:, 2:] += f[:, :2]
        boxes[xywh] = f
    elif not plain or xywh.any():
        boxes = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                          for a in annos], np.float64).reshape(-1, 4)
    return np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]),
                           np.maximum(boxes[:, :2], boxes[:, 2:])], 1), classes, num


# (box, anchor) pairs matched at once: enough to amortise numpy's per-call cost, few enough
# that the temporaries stay small (allocations of several MB are mmap-ed, and their page
# faults would cost more than the counting)
CHUNK_PAIRS = 24_000


def count_dataset(dataset_dicts: Sequence[Dict], counter: AnchorCounter, augmentations=(),
                  head_classes: int = 1, progress: bool = True,
                  chunk_pairs: int = CHUNK_PAIRS) -> PriorCounts:
    """
    Count over ``dataset_dicts`` (every rank counts its shard ``rank::world_size``; the
    integer counts are summed over ranks, so any number of processes gives the same
    result). ``head_classes`` is the C of the prior (1 for an RPN). Images are counted a
    chunk at a time (every size of each) with :meth:`AnchorCounter.count_batch`, a chunk
    holding the (box, size) combinations that the pairs per combination so far say make
    about ``chunk_pairs`` pairs.
    """
    t0 = time.perf_counter()
    rank, world = comm.get_rank(), comm.get_world_size()
    shard = list(range(rank, len(dataset_dicts), world))
    per_image = np.zeros((len(shard), 2), dtype=np.int64)  # fg, valid per image
    per_class = np.zeros(counter.num_classes, dtype=np.int64)
    bar, options, steps = None, {}, _resize_steps(augmentations)
    if progress and comm.is_main_process():
        from tqdm import tqdm

        bar = tqdm(total=len(shard), desc="counting anchors for the prior", unit="img",
                   mininterval=2)
    c0, budget, combos, pairs = 0, chunk_pairs / 64, 0, 0
    while c0 < len(shard):
        dicts, sizes, load = [], [], 0
        while c0 + len(dicts) < len(shard) and (not dicts or load < budget):
            d = dataset_dicts[shard[c0 + len(dicts)]]
            h, w = int(d["height"]), int(d["width"])
            if (h, w) not in options:
                options[(h, w)] = np.array([(nh, nw, n) for (nh, nw), n in
                                            _sizes_after(steps, h, w)], np.int64)
            dicts.append(d)
            sizes.append((h, w, options[(h, w)]))
            load += max(len(d.get("annotations", ())), 1) * len(options[(h, w)])
        boxes, classes, num = _images_gt(dicts)
        cut = np.cumsum(num)[:-1]
        images = [(b, c) + hw for b, c, hw in zip(np.split(boxes, cut), np.split(classes, cut),
                                                  sizes)]
        batch, image_of = counter.image_batch(images)
        before = counter.pairs
        fg, valid, pc = counter.count_batch(batch)
        combos, pairs = combos + load, pairs + counter.pairs - before
        budget = min(max(chunk_pairs * combos / max(pairs, 1), 16), 8 * chunk_pairs)
        np.add.at(per_image, (c0 + image_of, 0), fg * batch.weights)
        np.add.at(per_image, (c0 + image_of, 1), valid * batch.weights)
        per_class += pc
        c0 += len(images)
        if bar is not None:
            bar.update(len(images))
    if bar is not None:
        bar.close()
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
    rows = [[d["height"], d["width"], [[list(map(float, a["bbox"])), int(a["bbox_mode"]),
                                        a["category_id"], a.get("iscrowd", 0)]
                                       for a in d.get("annotations", ())]]
            for d in dataset_dicts]
    return hashlib.sha1(json.dumps(rows).encode()).hexdigest()


def prior_fingerprint(dataset_names, dataset_dicts, counter: AnchorCounter, augmentations,
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


def load_or_count(dataset_names, dataset_dicts, counter: AnchorCounter, augmentations=(),
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
