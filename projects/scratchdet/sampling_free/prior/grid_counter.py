"""What every prior counter shares: the padded feature-map grids of an image, the
(image, size) items and their flat batches, and the numpy grouping of (box, location)
pairs by location."""
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

__all__ = ["GridCounter"]


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
