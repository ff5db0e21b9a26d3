"""The image sizes a data mapper's augmentations can produce, each with its multiplicity.

Every size the mapper can produce counts once per image and per way of producing it (the
mapper samples its choices uniformly); for ``sample_style="range"`` eight evenly spaced
sizes stand for the range. Flips and photometric changes leave the size as it is.
"""
import logging
from typing import Dict, List, Sequence, Tuple

import numpy as np

import detectron2.data.transforms as T

from ...data.ssd_augment import PhotometricDistort

__all__ = ["resize_options"]

logger = logging.getLogger(__name__)


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
