# -*- coding: utf-8 -*-
"""
SSD300 training-time data augmentation (as used by SSD and ScratchDet),
implemented as Detectron2 :class:`~detectron2.data.transforms.Augmentation` s.

The canonical SSD pipeline (Liu et al. 2016; Zhu et al., "ScratchDet", 2019) is::

    PhotometricDistort -> Expand ("zoom out") -> MinIoURandomCrop ("zoom in")
    -> Resize(300x300) -> RandomFlip(horizontal)

Every augmentation samples its random parameters (with ``np.random``, like all
Detectron2 augmentations) in ``get_transform`` and returns a *deterministic*
fvcore :class:`~fvcore.transforms.transform.Transform`, so the same geometric
change can be applied to the image, boxes, polygons and semantic segmentation.

All augmentations follow Detectron2's conventions for :class:`AugInput`:

* ``image``: ``(H, W)`` or ``(H, W, C)`` ndarray, uint8 or floating point with
  values in ``[0, 255]``, channels in the dataset's ``image_format`` (BGR by default).
* ``boxes``: ``(N, 4)`` float ndarray, XYXY in absolute pixel coordinates.

Note on box filtering: Detectron2 augmentations cannot drop annotations. After
:class:`MinIoURandomCrop`, Detectron2's dataset mapper
(``detection_utils.transform_instance_annotations`` +
``filter_empty_instances``) clips boxes to the cropped image and removes only
boxes that became empty. SSD additionally discards the GT boxes whose *centre*
falls outside the crop; use :func:`boxes_with_center_inside` on the original
boxes to obtain that keep-mask if you need the exact SSD behaviour.

Library parts: the crop subclasses Detectron2's ``MinIoURandomCrop`` and measures IoUs
with :func:`~detectron2.structures.pairwise_iou`; the expand is fvcore's ``PadTransform``
with a per-channel fill (:class:`ChannelPadTransform`); the photometric distortion, which
no library has, is in :mod:`.photometric`.
"""
import math
import numbers
from collections.abc import Sequence
from typing import Optional, Tuple

import numpy as np
import torch
from fvcore.transforms.transform import (
    CropTransform,
    NoOpTransform,
    PadTransform,
    Transform,
    TransformList,
)

from detectron2.data import transforms as T
from detectron2.data.transforms import Augmentation
from detectron2.structures import Boxes, pairwise_iou

from .arguments import check_fill, check_image_format, check_prob, check_range, check_real
from .photometric import PhotometricDistort, PhotometricDistortTransform

__all__ = [
    "DEFAULT_PIXEL_MEAN_BGR",
    "PhotometricDistort",
    "PhotometricDistortTransform",
    "ChannelPadTransform",
    "Expand",
    "MinIoURandomCrop",
    "boxes_with_center_inside",
    "ssd_train_augmentations",
    "ssd_test_augmentations",
]

#: Detectron2's default ImageNet pixel mean, in BGR order.
DEFAULT_PIXEL_MEAN_BGR: Tuple[float, float, float] = (103.53, 116.28, 123.675)


# --------------------------------------------------------------------------- #
# Expand ("zoom out")
# --------------------------------------------------------------------------- #
class ChannelPadTransform(PadTransform):
    """
    fvcore's :class:`PadTransform` (``x0``/``y0``/``x1``/``y1`` pixels added on the left,
    top, right and bottom) with one image pad value per channel. Coordinates, boxes,
    polygons, segmentations (padded with ``seg_pad_value``) and the inverse (a
    :class:`CropTransform`) are fvcore's.

    Only :meth:`apply_image` differs: ``np.pad`` takes one constant per axis, not per
    channel, and casts a float constant to an integer image by truncation; SSD fills the
    canvas with the per-channel pixel mean, rounded for integer images.
    """

    def __init__(self, x0: int, y0: int, x1: int, y1: int, orig_w: Optional[int] = None,
                 orig_h: Optional[int] = None, pad_value=0.0, seg_pad_value: int = 0):
        """
        Args:
            x0, y0, x1, y1: non-negative pixels added on the left, top, right and bottom.
            orig_w, orig_h: size of the input image (needed for :meth:`inverse`).
            pad_value: a number or per-channel sequence (image channel order) for the
                image; a 2D image is padded with the mean of the sequence.
            seg_pad_value: value used to pad segmentations.
        """
        pads = (x0, y0, x1, y1)
        if not all(isinstance(p, (numbers.Integral, np.integer)) and p >= 0 for p in pads):
            raise ValueError(f"ChannelPadTransform: pads (x0, y0, x1, y1) = {pads} must be "
                             "non-negative integers")
        super().__init__(*(int(p) for p in pads), orig_w, orig_h,
                         check_fill("pad_value", pad_value), seg_pad_value)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """
        Args:
            img: ``(H, W)`` or ``(H, W, C)`` array (``(orig_h, orig_w)`` when given).
        Returns:
            ``(y0 + H + y1, x0 + W + x1[, C])`` array of the same dtype.
        """
        h, w = img.shape[:2]
        if self.orig_w is not None and (w, h) != (self.orig_w, self.orig_h):
            raise ValueError(f"ChannelPadTransform expects input of size (h={self.orig_h}, "
                             f"w={self.orig_w}), got (h={h}, w={w})")
        fill = np.asarray(self.pad_value, dtype=np.float64)
        if img.ndim == 2:
            fill = fill.mean()
        elif fill.size not in (1, img.shape[2]):
            raise ValueError(f"pad_value has {fill.size} values but the image has "
                             f"{img.shape[2]} channels")
        if np.issubdtype(img.dtype, np.integer):
            info = np.iinfo(img.dtype)
            fill = np.clip(np.rint(fill), info.min, info.max)
        out = np.empty((self.y0 + h + self.y1, self.x0 + w + self.x1) + img.shape[2:], img.dtype)
        out[...] = fill
        out[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = img
        return out


class Expand(Augmentation):
    """
    SSD "zoom out": with probability ``prob``, place the image at a uniformly random
    position on a canvas of size ``(int(ratio * H), int(ratio * W))`` with
    ``ratio ~ U(1, max_ratio)`` and fill the rest with ``fill`` (the pixel mean): a
    :class:`ChannelPadTransform`. Boxes are translated accordingly.

    Input ``image``: ``(H, W)`` or ``(H, W, C)``. Output: ``(H', W'[, C])`` with
    ``H <= H' <= max_ratio * H`` and ``W <= W' <= max_ratio * W``.
    """

    input_args = ("image",)

    def __init__(self, max_ratio: float = 4.0, prob: float = 0.5, fill=DEFAULT_PIXEL_MEAN_BGR):
        """
        Args:
            max_ratio: maximum canvas/image side ratio, >= 1.
            prob: probability of expanding, in [0, 1].
            fill: canvas value, a number or per-channel sequence in the image's
                channel order (default: BGR ImageNet mean).
        """
        super().__init__()
        max_ratio = check_real("max_ratio", max_ratio, 1.0)
        prob = check_prob("prob", prob)
        fill = check_fill("fill", fill)
        self._init(locals())

    def get_transform(self, image) -> Transform:
        if not (np.random.rand() < self.prob):
            return NoOpTransform()
        h, w = image.shape[:2]
        ratio = float(np.random.uniform(1.0, self.max_ratio))
        canvas_h, canvas_w = int(h * ratio), int(w * ratio)
        left = int(np.random.uniform(0, canvas_w - w))
        top = int(np.random.uniform(0, canvas_h - h))
        return ChannelPadTransform(left, top, canvas_w - w - left, canvas_h - h - top,
                                   orig_w=w, orig_h=h, pad_value=self.fill)


# --------------------------------------------------------------------------- #
# MinIoURandomCrop ("zoom in")
# --------------------------------------------------------------------------- #
def _center_inside(boxes: np.ndarray, x0, y0, x1, y1) -> np.ndarray:
    """(N,) mask of ``boxes`` (N, 4) whose centre is strictly inside the crop; (T, N) for
    crop edges of shape (T, 1)."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2.0
    cy = (boxes[:, 1] + boxes[:, 3]) / 2.0
    return (cx > x0) & (cx < x1) & (cy > y0) & (cy < y1)


def boxes_with_center_inside(boxes, transform) -> np.ndarray:
    """
    SSD keeps only the GT boxes whose centre lies (strictly) inside the random crop.
    Detectron2 only clips boxes to the crop, so use this mask on the annotations
    *before* (or alongside) applying the crop.

    Args:
        boxes: ``(N, 4)`` XYXY absolute boxes in the coordinates of the image
            that is *input* to the crop (i.e. the original boxes).
        transform: the :class:`CropTransform` returned by :class:`MinIoURandomCrop`
            (with attributes x0, y0, w, h), or a :class:`NoOpTransform`
            (all boxes kept).
    Returns:
        ``(N,)`` bool ndarray, True for boxes to keep.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if isinstance(transform, TransformList) and len(transform.transforms) <= 1:
        transform = transform.transforms[0] if transform.transforms else NoOpTransform()
    if isinstance(transform, NoOpTransform):
        return np.ones(len(boxes), dtype=bool)
    if not isinstance(transform, CropTransform):
        raise TypeError(
            f"transform must be a CropTransform or NoOpTransform, got {type(transform).__name__}"
        )
    x0, y0 = transform.x0, transform.y0
    return _center_inside(boxes, x0, y0, x0 + transform.w, y0 + transform.h)


class MinIoURandomCrop(T.MinIoURandomCrop):
    """
    SSD's random crop ("zoom in" / ``RandomSampleCrop``) as ScratchDet trains with it:
    Detectron2's :class:`~detectron2.data.transforms.MinIoURandomCrop` with one mode
    draw per image.

    A mode is drawn uniformly from ``sample_mode = (None, *min_ious)`` (None: the whole
    image) and kept in ``self.mode``. For a threshold, ``max_trials`` integer crops are
    drawn at once, with width in ``[ceil(min_crop_size * W), W]``, height in
    ``[ceil(min_crop_size * H), H]`` and a uniformly random position. The first of them
    whose ``h / w`` is in ``aspect_ratio_range``, whose IoU (:func:`pairwise_iou`) with
    *every* GT box is ``>= threshold`` and that contains the centre of at least one GT box
    is returned as a :class:`CropTransform` (the distribution of drawing and testing them
    one at a time, with one IoU call). Otherwise (whole-image mode, no boxes, or no crop
    found) a :class:`NoOpTransform` is returned.

    What differs from Detectron2's ``get_transform``, and why:

    * the modes are ``min_ious`` and the whole image; Detectron2 appends an unconstrained
      mode (threshold 0), which SSD's configuration lists itself when it wants one;
    * when no crop of the drawn threshold passes, the image is kept whole; Detectron2
      draws another mode, up to ``mode_trials`` times, then returns None, which is not a
      Transform;
    * the crop checked against the threshold is the crop returned; Detectron2 checks the
      patch ``int(left), int(top), int(left + w), int(top + h)`` but returns an
      ``int(w) x int(h)`` crop, a pixel smaller at times, which can fall below the
      threshold. Sizes and positions are therefore drawn as integers;
    * the trials are drawn together and tested with one :func:`pairwise_iou` call, where
      Detectron2 calls it once per trial;
    * ``aspect_ratio_range`` is a parameter (Detectron2: fixed ``(0.5, 2)``);
    * ``(H, W)`` images are accepted (Detectron2 unpacks ``H, W, C``);
    * no boxes keep the whole image (Detectron2 crops without a constraint);
    * the crop records the input size, so it can be inverted.

    Inputs: ``image`` ``(H, W[, C])`` and ``boxes`` ``(N, 4)`` XYXY absolute float.

    Note:
        After the crop, Detectron2's mapper clips boxes to the crop and removes only
        empty ones; boxes whose centre falls outside the crop are NOT removed
        automatically (SSD removes them: :class:`SSDDatasetMapper`). Use
        :func:`boxes_with_center_inside` with the original boxes and the returned
        transform to get SSD's keep-mask.
    """

    input_args = ("image", "boxes")

    def __init__(
        self,
        min_ious: Tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9),
        min_crop_size: float = 0.3,
        aspect_ratio_range: Tuple[float, float] = (0.5, 2.0),
        max_trials: int = 50,
    ):
        """
        Args:
            min_ious: non-empty sequence of IoU thresholds in [0, 1] (include 0.0
                for an unconstrained crop mode).
            min_crop_size: minimum crop side as a fraction of the image side, in (0, 1].
            aspect_ratio_range: ``(low, high)`` allowed crop ``h / w``, low > 0.
            max_trials: number of crop samples tried for the chosen mode, >= 1
                (Detectron2's ``crop_trials``).
        """
        if isinstance(min_ious, (str, bytes)) or not isinstance(min_ious, Sequence) or len(min_ious) == 0:
            raise ValueError(f"min_ious must be a non-empty sequence of numbers, got {min_ious!r}")
        min_ious = tuple(check_real(f"min_ious[{i}]", v, 0.0, 1.0) for i, v in enumerate(min_ious))
        min_crop_size = check_real("min_crop_size", min_crop_size, 0.0, 1.0, low_inclusive=False)
        if not isinstance(max_trials, (numbers.Integral, np.integer)) or isinstance(max_trials, bool) or max_trials < 1:
            raise ValueError(f"max_trials must be an integer >= 1, got {max_trials!r}")
        super().__init__(min_ious, min_crop_size, mode_trials=1, crop_trials=int(max_trials))
        self.sample_mode = (None,) + min_ious
        self.aspect_ratio_range = check_range("aspect_ratio_range", aspect_ratio_range, 0.0, False)
        self.mode = None

    @property
    def max_trials(self) -> int:
        """Crops tried for the drawn threshold (Detectron2's ``crop_trials``)."""
        return self.crop_trials

    def get_transform(self, image, boxes) -> Transform:
        self.mode = None
        if boxes is None or len(boxes) == 0:
            return NoOpTransform()
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        h, w = image.shape[:2]
        self.mode = self.sample_mode[np.random.randint(len(self.sample_mode))]
        if self.mode is None:
            return NoOpTransform()
        min_w = min(w, max(1, int(math.ceil(self.min_crop_size * w - 1e-9))))
        min_h = min(h, max(1, int(math.ceil(self.min_crop_size * h - 1e-9))))
        cw = np.random.randint(min_w, w + 1, size=self.crop_trials)
        ch = np.random.randint(min_h, h + 1, size=self.crop_trials)
        x0, y0 = np.random.randint(0, w - cw + 1), np.random.randint(0, h - ch + 1)
        crops = np.stack([x0, y0, x0 + cw, y0 + ch], axis=1).astype(np.float64)  # (T, 4)
        lo_ar, hi_ar = self.aspect_ratio_range
        iou = pairwise_iou(Boxes(torch.from_numpy(crops)), Boxes(torch.from_numpy(boxes)))
        ok = ((ch / cw >= lo_ar) & (ch / cw <= hi_ar)
              & (iou.min(dim=1).values.numpy() >= self.mode)
              & _center_inside(boxes, *crops.T[..., None]).any(axis=1))
        if not ok.any():
            return NoOpTransform()
        i = int(np.argmax(ok))
        return CropTransform(int(x0[i]), int(y0[i]), int(cw[i]), int(ch[i]), orig_w=w, orig_h=h)


# --------------------------------------------------------------------------- #
# pipelines
# --------------------------------------------------------------------------- #
def _check_image_size(image_size) -> Tuple[int, int]:
    if isinstance(image_size, (numbers.Integral, np.integer)) and not isinstance(image_size, bool):
        image_size = (int(image_size), int(image_size))
    if (
        isinstance(image_size, (str, bytes))
        or not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or not all(
            isinstance(s, (numbers.Integral, np.integer)) and not isinstance(s, bool) and s > 0
            for s in image_size
        )
    ):
        raise ValueError(f"image_size must be a positive int or (h, w) of positive ints, got {image_size!r}")
    return (int(image_size[0]), int(image_size[1]))


def _resize(size: Tuple[int, int], interp) -> Augmentation:
    return T.Resize(size) if interp is None else T.Resize(size, interp)


def ssd_train_augmentations(image_size=300, image_format: str = "BGR", mean=None, interp=None):
    """
    The SSD/ScratchDet training pipeline::

        [PhotometricDistort, Expand, MinIoURandomCrop,
         Resize((image_size, image_size)), RandomFlip(horizontal=True)]

    Args:
        image_size: int or ``(h, w)`` output size (default 300).
        image_format: "BGR", "RGB" or "L" (channel order of the images).
        mean: Expand fill value in ``image_format`` channel order. Defaults to the
            ImageNet mean (``DEFAULT_PIXEL_MEAN_BGR``, reversed for RGB, averaged for L).
        interp: PIL interpolation for the resize (None: Detectron2's default, bilinear).
    Returns:
        list[Augmentation]
    """
    size = _check_image_size(image_size)
    image_format = check_image_format(image_format)
    if mean is None:
        if image_format == "RGB":
            mean = DEFAULT_PIXEL_MEAN_BGR[::-1]
        elif image_format == "L":
            mean = (float(np.mean(DEFAULT_PIXEL_MEAN_BGR)),)
        else:
            mean = DEFAULT_PIXEL_MEAN_BGR
    mean = check_fill("mean", mean)
    return [
        PhotometricDistort(image_format=image_format),
        Expand(fill=mean),
        MinIoURandomCrop(),
        _resize(size, interp),
        T.RandomFlip(horizontal=True, vertical=False),
    ]


def ssd_test_augmentations(image_size=300, interp=None):
    """
    The SSD test pipeline: ``[Resize((image_size, image_size))]``.

    Args:
        image_size: int or ``(h, w)`` output size (default 300).
        interp: PIL interpolation (None: Detectron2's default, bilinear).
    Returns:
        list[Augmentation]
    """
    return [_resize(_check_image_size(image_size), interp)]
