"""The foreground prior of an FCOS head: Detectron2's point assignment, counted sparsely.

Detectron2's :meth:`FCOS._match_anchors` / :meth:`FCOS.label_anchors` make a location
(one anchor point per grid cell and level, the centre of a stride-sized square anchor)
foreground for a ground-truth box when

- the point is inside the box: the smallest of its distances to the four sides is > 0;
- it is within the centre-sampling radius: ``max(|dx|, |dy|) < radius x stride`` from
  the box centre;
- the largest of the four distances is in the level's range: ``> 4 x stride`` (0 on
  the first level) and ``< 8 x stride`` (infinity on the last);

and among the boxes that claim it, the one of highest float32 key ``1e8 - area`` wins,
the first such box on ties (``max(dim=0)``). Float32 rounds ``1e8 - area`` to multiples
of 8, so boxes within a few pixels of area tie and the first one takes the location:
this decides the per-class counts. There are no ignored locations: N is every location
of the image's padded grid.

:class:`PointCounter` applies exactly this rule, in Detectron2's float32 arithmetic, to
only the points that can pass it: per box and level, the grid cells within
``radius x stride`` of the centre (at most about ``(2 radius + 2)^2``), on the levels
whose size range the box's half-size and size can meet. Counting costs about as much as
the boxes, not the locations.
"""
from typing import Dict, Tuple

import numpy as np

from .prior.grid_counter import GridCounter, _Batch, _group_pairs, _grouped_max, _ranks

__all__ = ["FCOSPointRule", "PointCounter"]


class FCOSPointRule:
    """
    Detectron2's FCOS assignment as a prior head's rule: what ``prior_heads()`` entries
    carry in place of an IoU :class:`Matcher`. :meth:`make_counter` builds its counter.

    Args:
        center_sampling_radius: FCOS's ``center_sampling_radius`` (in strides).
        lower: a level's lower size bound in strides (0 on the first level).
        upper: a level's upper size bound in strides (infinity on the last level).
    """

    def __init__(self, center_sampling_radius: float, lower: float = 4.0, upper: float = 8.0):
        self.center_sampling_radius = float(center_sampling_radius)
        self.lower, self.upper = float(lower), float(upper)

    def make_counter(self, anchor_generator, num_classes: int, size_divisibility: int = 0):
        return PointCounter(anchor_generator, self, num_classes, size_divisibility)

    def fields(self) -> Dict:
        return dict(rule="fcos_points", center_sampling_radius=self.center_sampling_radius,
                    size_range=[0.0, self.lower, self.upper, "inf"])


class PointCounter(GridCounter):
    """
    Counts the locations :class:`FCOSPointRule` labels foreground (see the module
    docstring), from the head's anchor generator (one square cell anchor per level, as
    Detectron2's FCOS builds it) and the image grid after padding.

    Args:
        anchor_generator: the FCOS model's ``DefaultAnchorGenerator`` (one cell anchor
            per level).
        rule: the :class:`FCOSPointRule`.
        num_classes: classes of the ground truth (for per-class counts).
        size_divisibility: the backbone's; images are padded to a multiple of it.
    """

    def __init__(self, anchor_generator, rule: FCOSPointRule, num_classes: int,
                 size_divisibility: int = 0):
        super().__init__(anchor_generator, num_classes, size_divisibility)
        self.rule = rule
        cells = [c.detach().cpu().numpy().astype(np.float32) for c in anchor_generator.cell_anchors]
        if any(len(c) != 1 for c in cells):
            raise ValueError("PointCounter: FCOS has one anchor point per location; got "
                             f"{[len(c) for c in cells]} cell anchors per level")
        self._cell = np.concatenate(cells)  # (L, 4) float32
        self._offset = float(anchor_generator.offset)
        # float64 geometry of each level's points: centre of cell x at base + x * stride
        s, c = np.array(self._strides, np.float64), self._cell.astype(np.float64)
        self._base = self._offset * s + (c[:, 0] + c[:, 2]) / 2
        self._base_y = self._offset * s + (c[:, 1] + c[:, 3]) / 2
        size = c[:, 2] - c[:, 0]
        levels = len(cells)
        self._lo = np.where(np.arange(levels) == 0, 0.0, rule.lower * size)
        self._hi = np.where(np.arange(levels) == levels - 1, np.inf, rule.upper * size)
        self._reach = rule.center_sampling_radius * np.maximum(size, c[:, 3] - c[:, 1])

    def fingerprint_fields(self) -> Dict:
        """The points (cell anchors, strides, offset) and the rule's parameters."""
        return dict(cell_anchors=[[round(float(x), 4) for x in c] for c in self._cell],
                    strides=list(self._strides), offset=self._offset, **self.rule.fields())

    def count_batch(self, batch: _Batch) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per item: (n,) foreground locations, (n,) all locations (both unweighted); (C,)
        foreground locations per gt class summed over items, each times its weight."""
        n = len(batch.counts)
        valid = (batch.grids[..., 0] * batch.grids[..., 1]).sum(1)
        fg = np.zeros(n, np.int64)
        per_class = np.zeros(self.num_classes, np.int64)
        if not len(batch.boxes):
            return fg, valid, per_class
        box, item, flat, key = self._pairs(batch)
        # per location: the highest key, the first box at it (Detectron2's max(dim=0))
        order, new = _group_pairs(item * (int(valid.max()) + 1) + flat, box, len(batch.boxes))
        box, key, item = box[order], key[order], item[order]
        starts = np.flatnonzero(new)
        best, matched = _grouped_max(key, starts, np.cumsum(new) - 1, box)
        is_fg = best >= np.float32(1e-5)  # label_anchors: quality < 1e-5 is background
        loc_item = item[starts][is_fg]
        fg += np.bincount(loc_item, minlength=n)
        cls = batch.classes[matched[is_fg]]
        known = cls < self.num_classes
        per_class += np.bincount(cls[known], batch.weights[loc_item][known],
                                 minlength=self.num_classes)[: self.num_classes].astype(np.int64)
        return fg, valid, per_class

    def _pairs(self, batch: _Batch):
        """
        Every (box, location) pair that passes the rule, with the location's flat index
        within its item (levels in order, rows then columns, as Detectron2 concatenates
        its anchors) and the pair's float32 key ``1e8 - area``: (P,) each of box, item,
        flat, key.
        """
        boxes, grids, counts = batch.boxes, batch.grids, batch.counts
        item_of_gt = np.repeat(np.arange(len(counts)), counts)
        b = boxes.astype(np.float64)
        side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        # levels a box can meet: an inside point's largest distance lies in
        # [longer side / 2, longer side]; the margins cover float32 rounding
        ok = (side[:, None] * (1 + 1e-3) + 1 > self._lo[None]) & \
             (side[:, None] * 0.5 * (1 - 1e-3) - 1 < self._hi[None])
        g, lv = np.nonzero(ok)
        s = np.array(self._strides, np.float64)[lv]
        cx, cy = (b[g, 0] + b[g, 2]) / 2, (b[g, 1] + b[g, 3]) / 2
        reach = self._reach[lv] + 1
        # grid cells whose point can be within the radius and inside the box
        x0 = np.ceil((np.maximum(cx - reach, b[g, 0] - 1) - self._base[lv]) / s)
        x1 = np.floor((np.minimum(cx + reach, b[g, 2] + 1) - self._base[lv]) / s)
        y0 = np.ceil((np.maximum(cy - reach, b[g, 1] - 1) - self._base_y[lv]) / s)
        y1 = np.floor((np.minimum(cy + reach, b[g, 3] + 1) - self._base_y[lv]) / s)
        gh, gw = grids[item_of_gt[g], lv, 0], grids[item_of_gt[g], lv, 1]
        x0, y0 = np.maximum(x0, 0).astype(np.int64), np.maximum(y0, 0).astype(np.int64)
        x1 = np.minimum(x1, gw - 1).astype(np.int64)
        y1 = np.minimum(y1, gh - 1).astype(np.int64)
        nx, ny = np.maximum(x1 - x0 + 1, 0), np.maximum(y1 - y0 + 1, 0)
        # rows, then the cells of each row
        r = np.repeat(np.arange(len(g)), ny)
        iy = np.repeat(y0, ny) + _ranks(ny)
        p = np.repeat(r, nx[r])
        ix = np.repeat(x0[r], nx[r]) + _ranks(nx[r])
        iy = np.repeat(iy, nx[r])
        gp, lp = g[p], lv[p]
        self.pairs += len(gp)
        keep, key = self._rule(boxes[gp], lp, ix, iy)
        gp, lp, ix, iy, key = gp[keep], lp[keep], ix[keep], iy[keep], key[keep]
        it = item_of_gt[gp]
        sizes = grids[:, :, 0] * grids[:, :, 1]
        level_start = np.cumsum(sizes, axis=1) - sizes
        flat = level_start[it, lp] + iy * grids[it, lp, 1] + ix
        return gp, it, flat, key

    def _rule(self, gt: np.ndarray, level: np.ndarray, ix: np.ndarray, iy: np.ndarray):
        """
        Detectron2's FCOS rule on (P,) pairs in its float32 arithmetic: the anchor box
        is ``shift + cell anchor`` (``shift = offset x stride + i x stride``, rounded to
        float32 as ``torch.arange`` rounds it), its centre ``(x1 + x2) / 2`` and size
        ``x2 - x1`` as ``Boxes.get_centers`` and ``_match_anchors`` compute them.
        gt: (P, 4) float32 boxes. Returns (P,) bool, the pairs that match, and (P,)
        float32 keys ``1e8 - area``.
        """
        f = np.float32
        s = np.array(self._strides, np.float64)[level]
        cell = self._cell[level]
        sx = (self._offset * s + ix * s).astype(f)
        sy = (self._offset * s + iy * s).astype(f)
        ax1, ay1, ax2, ay2 = sx + cell[:, 0], sy + cell[:, 1], sx + cell[:, 2], sy + cell[:, 3]
        acx, acy = (ax1 + ax2) / f(2), (ay1 + ay2) / f(2)
        size = ax2 - ax1
        gx1, gy1, gx2, gy2 = gt.T
        gcx, gcy = (gx1 + gx2) / f(2), (gy1 + gy2) / f(2)
        region = f(self.rule.center_sampling_radius) * size
        ok = np.maximum(np.abs(acx - gcx), np.abs(acy - gcy)) < region
        d = np.stack([acx - gx1, acy - gy1, gx2 - acx, gy2 - acy], 1)
        ok &= d.min(1) > 0
        dmax = d.max(1)
        levels = len(self._strides)
        lower = np.where(level == 0, f(0), size * f(self.rule.lower))
        upper = np.where(level == levels - 1, f(np.inf), size * f(self.rule.upper))
        ok &= (dmax > lower) & (dmax < upper)
        key = f(1e8) - (gx2 - gx1) * (gy2 - gy1)
        return ok, key.astype(f)
