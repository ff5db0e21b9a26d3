"""The foreground prior of a dense head, counted from annotations only.

For every training image, the image size after the data mapper's resize gives the
feature-map sizes (padded size / stride), hence the model's anchors; the model's own
matcher labels them against the image's ground truth exactly as in training (crowd
boxes dropped and boxes clipped and filtered as Detectron2's mapper does). The counts

    N_f  foreground anchors, N_j  foreground anchors of class j,  N  non-ignored anchors

give the prior ``p = (N_f / N) / C`` used to initialise the classification bias and the
adaptive score thresholds. No image is decoded and no backbone is run.

Multi-scale training: every size the mapper can produce counts once per image and per
way of producing it (:mod:`.resize`). Flips are ignored (they leave counts unchanged up
to anchor-grid symmetry). Each image is padded on its own to the backbone's size
divisibility (in a batch it would be padded to the largest image, which adds background
anchors).

Only the anchors near a box are matched (:class:`AnchorCounter`), so counting costs about
as much as the boxes, not the anchors. A head with another assignment rule brings its
own :class:`GridCounter` (FCOS: points).

Modules: :mod:`.grid_counter` (grids, batches, pair grouping), :mod:`.anchor_counter`
(the dense reference and the sparse exact counter), :mod:`.resize` (the sizes an image
can have), :mod:`.counts` (:class:`PriorCounts`, :func:`count_dataset`), :mod:`.cache`
(fingerprint, lock, atomic write, validated read, :func:`load_or_count`).
"""
from .anchor_counter import AnchorCounter
from .cache import (
    LOCK_TIMEOUT,
    PRIOR_VERSION,
    _cache_path,
    _read_cache,
    _write_cache,
    load_or_count,
    prior_fingerprint,
)
from .counts import CHUNK_PAIRS, PriorCounts, _image_gt, _images_gt, count_dataset
from .grid_counter import GridCounter, _Batch, _group_pairs, _grouped_max, _Item, _ranks
from .resize import resize_options

__all__ = ["PriorCounts", "AnchorCounter", "GridCounter", "resize_options", "count_dataset",
           "prior_fingerprint", "load_or_count", "PRIOR_VERSION"]
