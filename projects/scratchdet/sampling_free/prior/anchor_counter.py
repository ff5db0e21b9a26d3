"""The sparse, exact anchor counter of an IoU-matched head (RetinaNet, RPN)."""
from typing import Dict, NamedTuple, Sequence, Tuple

import numpy as np
import torch

from detectron2.structures import Boxes, pairwise_iou

from .grid_counter import GridCounter, _Batch, _group_pairs, _grouped_max, _Item, _ranks

__all__ = ["AnchorCounter"]


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
        # By hand on purpose, here and in _windows: pairwise_iou computes the full
        # (boxes x anchors) matrix, and the sparse path must reproduce each of its entries
        # bit for bit on only the pairs it keeps, so that its labels equal the dense path's.
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
