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

This module only depends on numpy, cv2, fvcore and detectron2.
"""
import math
import numbers
from collections.abc import Sequence
from typing import Optional, Tuple

import cv2
import numpy as np
from fvcore.transforms.transform import (
    CropTransform,
    NoOpTransform,
    Transform,
    TransformList,
)

from detectron2.data import transforms as T
from detectron2.data.transforms import Augmentation

__all__ = [
    "DEFAULT_PIXEL_MEAN_BGR",
    "PhotometricDistort",
    "PhotometricDistortTransform",
    "Expand",
    "ExpandTransform",
    "MinIoURandomCrop",
    "boxes_with_center_inside",
    "ssd_train_augmentations",
    "ssd_test_augmentations",
]

#: Detectron2's default ImageNet pixel mean, in BGR order.
DEFAULT_PIXEL_MEAN_BGR: Tuple[float, float, float] = (103.53, 116.28, 123.675)

_SUPPORTED_FORMATS = ("BGR", "RGB", "L")


# --------------------------------------------------------------------------- #
# argument validation helpers
# --------------------------------------------------------------------------- #
def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_real(name: str, value, low=None, high=None, low_inclusive=True) -> float:
    if not _is_real(value) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    value = float(value)
    if low is not None:
        if (low_inclusive and value < low) or (not low_inclusive and value <= low):
            op = ">=" if low_inclusive else ">"
            raise ValueError(f"{name} must be {op} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")
    return value


def _check_prob(name: str, value) -> float:
    return _check_real(name, value, 0.0, 1.0)


def _check_range(name: str, value, low=0.0, low_inclusive=True) -> Tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}")
    lo = _check_real(f"{name}[0]", value[0], low, low_inclusive=low_inclusive)
    hi = _check_real(f"{name}[1]", value[1], low, low_inclusive=low_inclusive)
    if lo > hi:
        raise ValueError(f"{name} must satisfy low <= high, got {value!r}")
    return (lo, hi)


def _check_fill(name: str, value) -> Tuple[float, ...]:
    if _is_real(value):
        value = (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{name} must be a number or a non-empty sequence of numbers, got {value!r}")
    return tuple(_check_real(f"{name}[{i}]", v) for i, v in enumerate(value))


def _check_image_format(value) -> str:
    if value not in _SUPPORTED_FORMATS:
        raise ValueError(f"image_format must be one of {_SUPPORTED_FORMATS}, got {value!r}")
    return value


def _cast_like(img: np.ndarray, dtype) -> np.ndarray:
    """Clip a float image to [0, 255] and cast it to ``dtype`` (rounding for integers)."""
    img = np.clip(img, 0.0, 255.0)
    if np.issubdtype(dtype, np.integer):
        img = np.rint(img)
    return img.astype(dtype, copy=False)


# --------------------------------------------------------------------------- #
# Photometric distortion
# --------------------------------------------------------------------------- #
class PhotometricDistortTransform(Transform):
    """
    Deterministic SSD photometric distortion. Each parameter set to ``None``
    disables the corresponding step. Coordinates and segmentations are unchanged.

    The image is processed in float32 in this order (values are clipped to
    ``[0, 255]`` after every step, like SSD's saturating ``cv::Mat::convertTo``):

    1. brightness: ``img += brightness_delta``
    2. contrast (if ``contrast_first``): ``img *= contrast_alpha``
    3. saturation (HSV): ``S *= saturation_alpha``
    4. hue (HSV): ``H = (H + hue_delta) mod 360`` (degrees)
    5. contrast (if not ``contrast_first``)
    6. channel permutation: ``img = img[..., channel_perm]``

    Steps 3, 4 and 6 are skipped for single-channel images.
    """

    def __init__(
        self,
        brightness_delta: Optional[float] = None,
        contrast_alpha: Optional[float] = None,
        contrast_first: bool = True,
        saturation_alpha: Optional[float] = None,
        hue_delta: Optional[float] = None,
        channel_perm: Optional[Tuple[int, ...]] = None,
        image_format: str = "BGR",
    ):
        """
        Args:
            brightness_delta: value added to all pixels, or None.
            contrast_alpha: multiplicative contrast factor, or None.
            contrast_first: apply contrast before (True) or after (False) the HSV step.
            saturation_alpha: multiplicative factor on the HSV saturation, or None.
            hue_delta: hue shift in degrees, or None.
            channel_perm: permutation of the 3 channels, or None.
            image_format: "BGR", "RGB" or "L"; used for the HSV conversion.
        """
        super().__init__()
        _check_image_format(image_format)
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """
        Args:
            img: ``(H, W)`` or ``(H, W, C)`` uint8/float array with values in [0, 255].
        Returns:
            ndarray of the same shape and dtype, values clipped to [0, 255].
        """
        dtype = img.dtype
        out = np.asarray(img, dtype=np.float32).copy()
        is_color = out.ndim == 3 and out.shape[2] == 3 and self.image_format != "L"

        if self.brightness_delta is not None:
            out = np.clip(out + self.brightness_delta, 0.0, 255.0)
        if self.contrast_alpha is not None and self.contrast_first:
            out = np.clip(out * self.contrast_alpha, 0.0, 255.0)
        if is_color and (self.saturation_alpha is not None or self.hue_delta is not None):
            to_hsv, from_hsv = (
                (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)
                if self.image_format == "BGR"
                else (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB)
            )
            # For float32 input OpenCV gives H in [0, 360), S in [0, 1], V in input scale.
            hsv = cv2.cvtColor(np.ascontiguousarray(out), to_hsv)
            if self.saturation_alpha is not None:
                hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation_alpha, 0.0, 1.0)
            if self.hue_delta is not None:
                hsv[..., 0] = np.mod(hsv[..., 0] + self.hue_delta, 360.0)
            out = np.clip(cv2.cvtColor(hsv, from_hsv), 0.0, 255.0)
        if self.contrast_alpha is not None and not self.contrast_first:
            out = np.clip(out * self.contrast_alpha, 0.0, 255.0)
        if is_color and self.channel_perm is not None:
            out = out[..., list(self.channel_perm)]
        return _cast_like(out, dtype)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> Transform:
        # photometric changes have no geometric effect
        return NoOpTransform()


class PhotometricDistort(Augmentation):
    """
    SSD's random photometric distortion (``RandomBrightness``, ``RandomContrast``,
    ``ConvertColor``/``RandomSaturation``/``RandomHue`` and optional
    ``RandomLightingNoise`` channel swap). Boxes are unchanged.

    Each step is enabled independently with probability ``prob``; the contrast step
    is applied either before or after the saturation/hue step with equal chance.

    Input ``image``: ``(H, W)`` or ``(H, W, C)``, uint8 or float in [0, 255],
    channels in ``image_format``. Output has the same shape and dtype, clipped to
    [0, 255].
    """

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: Tuple[float, float] = (0.5, 1.5),
        saturation_range: Tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18,
        prob: float = 0.5,
        swap_channels: bool = False,
        image_format: str = "BGR",
    ):
        """
        Args:
            brightness_delta: additive brightness delta sampled from
                ``U(-brightness_delta, brightness_delta)``; must be >= 0.
            contrast_range: ``(low, high)`` for the multiplicative contrast factor, low >= 0.
            saturation_range: ``(low, high)`` for the saturation factor, low >= 0.
            hue_delta: hue shift in degrees sampled from ``U(-hue_delta, hue_delta)``,
                in [0, 180].
            prob: probability of applying each individual step, in [0, 1].
            swap_channels: if True, randomly permute the color channels with
                probability ``prob`` (SSD's ``RandomLightingNoise``). Off by default.
            image_format: "BGR" (default), "RGB" or "L".
        """
        super().__init__()
        brightness_delta = _check_real("brightness_delta", brightness_delta, 0.0)
        contrast_range = _check_range("contrast_range", contrast_range)
        saturation_range = _check_range("saturation_range", saturation_range)
        hue_delta = _check_real("hue_delta", hue_delta, 0.0, 180.0)
        prob = _check_prob("prob", prob)
        if not isinstance(swap_channels, (bool, np.bool_)):
            raise ValueError(f"swap_channels must be a bool, got {swap_channels!r}")
        swap_channels = bool(swap_channels)
        image_format = _check_image_format(image_format)
        self._init(locals())

    def _happens(self) -> bool:
        return bool(np.random.rand() < self.prob)

    def get_transform(self, image) -> Transform:
        brightness = contrast = saturation = hue = perm = None
        if self._happens():
            brightness = float(np.random.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = bool(np.random.randint(2))
        if self._happens():
            contrast = float(np.random.uniform(*self.contrast_range))
        if self._happens():
            saturation = float(np.random.uniform(*self.saturation_range))
        if self._happens():
            hue = float(np.random.uniform(-self.hue_delta, self.hue_delta))
        if self.swap_channels and self._happens():
            perm = tuple(int(i) for i in np.random.permutation(3))
        return PhotometricDistortTransform(
            brightness_delta=brightness,
            contrast_alpha=contrast,
            contrast_first=contrast_first,
            saturation_alpha=saturation,
            hue_delta=hue,
            channel_perm=perm,
            image_format=self.image_format,
        )


# --------------------------------------------------------------------------- #
# Expand ("zoom out")
# --------------------------------------------------------------------------- #
class ExpandTransform(Transform):
    """
    Paste an ``(orig_h, orig_w)`` image at ``(left, top)`` on a
    ``(canvas_h, canvas_w)`` canvas filled with ``fill``.
    Coordinates are translated by ``(left, top)``; segmentations are padded
    with ``seg_fill``.
    """

    def __init__(
        self,
        left: int,
        top: int,
        canvas_w: int,
        canvas_h: int,
        orig_w: int,
        orig_h: int,
        fill=DEFAULT_PIXEL_MEAN_BGR,
        seg_fill: int = 0,
    ):
        """
        Args:
            left, top: position of the original image's top-left corner on the canvas.
            canvas_w, canvas_h: canvas size; must satisfy ``left + orig_w <= canvas_w``
                and ``top + orig_h <= canvas_h``.
            orig_w, orig_h: size of the input image.
            fill: a number or per-channel sequence (image channel order) used for
                the image canvas. For 2D images the mean of ``fill`` is used.
            seg_fill: value used to pad segmentations.
        """
        super().__init__()
        if left < 0 or top < 0 or left + orig_w > canvas_w or top + orig_h > canvas_h:
            raise ValueError(
                f"ExpandTransform: image of size (w={orig_w}, h={orig_h}) at "
                f"(left={left}, top={top}) does not fit canvas (w={canvas_w}, h={canvas_h})"
            )
        fill = _check_fill("fill", fill)
        self._set_attributes(locals())

    def _paste(self, img: np.ndarray, fill) -> np.ndarray:
        h, w = img.shape[:2]
        if (h, w) != (self.orig_h, self.orig_w):
            raise ValueError(
                f"ExpandTransform expects input of size (h={self.orig_h}, w={self.orig_w}), "
                f"got (h={h}, w={w})"
            )
        fill = np.asarray(fill, dtype=np.float64).reshape(-1)
        if img.ndim == 2:
            fill = fill.mean()
        elif fill.size not in (1, img.shape[2]):
            raise ValueError(
                f"fill has {fill.size} values but the image has {img.shape[2]} channels"
            )
        if np.issubdtype(img.dtype, np.integer):
            info = np.iinfo(img.dtype)
            fill = np.clip(np.rint(fill), info.min, info.max)
        canvas = np.empty((self.canvas_h, self.canvas_w) + img.shape[2:], dtype=img.dtype)
        canvas[...] = fill
        canvas[self.top : self.top + h, self.left : self.left + w] = img
        return canvas

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """
        Args:
            img: ``(orig_h, orig_w)`` or ``(orig_h, orig_w, C)`` array.
        Returns:
            ``(canvas_h, canvas_w[, C])`` array of the same dtype.
        """
        return self._paste(img, self.fill)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self._paste(segmentation, self.seg_fill)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords[:, 0] += self.left
        coords[:, 1] += self.top
        return coords

    def inverse(self) -> Transform:
        return CropTransform(
            self.left, self.top, self.orig_w, self.orig_h, self.canvas_w, self.canvas_h
        )


class Expand(Augmentation):
    """
    SSD "zoom out": with probability ``prob``, place the image at a uniformly random
    position on a canvas of size ``(int(ratio * H), int(ratio * W))`` with
    ``ratio ~ U(1, max_ratio)`` and fill the rest with ``fill`` (the pixel mean).
    Boxes are translated accordingly.

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
        max_ratio = _check_real("max_ratio", max_ratio, 1.0)
        prob = _check_prob("prob", prob)
        fill = _check_fill("fill", fill)
        self._init(locals())

    def get_transform(self, image) -> Transform:
        if not (np.random.rand() < self.prob):
            return NoOpTransform()
        h, w = image.shape[:2]
        ratio = float(np.random.uniform(1.0, self.max_ratio))
        canvas_h, canvas_w = int(h * ratio), int(w * ratio)
        left = int(np.random.uniform(0, canvas_w - w))
        top = int(np.random.uniform(0, canvas_h - h))
        return ExpandTransform(left, top, canvas_w, canvas_h, w, h, fill=self.fill)


# --------------------------------------------------------------------------- #
# MinIoURandomCrop ("zoom in")
# --------------------------------------------------------------------------- #
def _iou_with_box(crop_xyxy: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU between a single box ``(4,)`` and ``boxes`` ``(N, 4)``, XYXY."""
    ix0 = np.maximum(crop_xyxy[0], boxes[:, 0])
    iy0 = np.maximum(crop_xyxy[1], boxes[:, 1])
    ix1 = np.minimum(crop_xyxy[2], boxes[:, 2])
    iy1 = np.minimum(crop_xyxy[3], boxes[:, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_c = (crop_xyxy[2] - crop_xyxy[0]) * (crop_xyxy[3] - crop_xyxy[1])
    area_b = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area_c + area_b - inter
    return inter / np.maximum(union, 1e-12)


def _center_inside(boxes: np.ndarray, x0, y0, x1, y1) -> np.ndarray:
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


class MinIoURandomCrop(Augmentation):
    """
    SSD's random crop ("zoom in" / ``RandomSampleCrop``).

    A mode is sampled uniformly from ``{no crop} ∪ min_ious``. For a threshold
    mode, up to ``max_trials`` integer crops are sampled with width in
    ``[min_crop_size * W, W]``, height in ``[min_crop_size * H, H]``,
    ``h / w`` in ``aspect_ratio_range`` and a uniformly random position. The first
    crop whose IoU with *every* GT box is ``>= threshold`` and that contains the
    centre of at least one GT box is returned as a :class:`CropTransform`.
    Otherwise (no-crop mode, no boxes, or no valid crop found) a
    :class:`NoOpTransform` is returned.

    Inputs: ``image`` ``(H, W[, C])`` and ``boxes`` ``(N, 4)`` XYXY absolute float.

    Note:
        After the crop, Detectron2's mapper clips boxes to the crop and removes only
        empty ones; boxes whose centre falls outside the crop are NOT removed
        automatically (SSD removes them). Use :func:`boxes_with_center_inside` with
        the original boxes and the returned transform to get SSD's keep-mask.
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
            max_trials: number of crop samples tried for the chosen mode, >= 1.
        """
        super().__init__()
        if isinstance(min_ious, (str, bytes)) or not isinstance(min_ious, Sequence) or len(min_ious) == 0:
            raise ValueError(f"min_ious must be a non-empty sequence of numbers, got {min_ious!r}")
        min_ious = tuple(_check_real(f"min_ious[{i}]", v, 0.0, 1.0) for i, v in enumerate(min_ious))
        min_crop_size = _check_real("min_crop_size", min_crop_size, 0.0, 1.0, low_inclusive=False)
        aspect_ratio_range = _check_range("aspect_ratio_range", aspect_ratio_range, 0.0, False)
        if not isinstance(max_trials, (numbers.Integral, np.integer)) or isinstance(max_trials, bool) or max_trials < 1:
            raise ValueError(f"max_trials must be an integer >= 1, got {max_trials!r}")
        max_trials = int(max_trials)
        self._init(locals())

    def get_transform(self, image, boxes) -> Transform:
        if boxes is None:
            return NoOpTransform()
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            return NoOpTransform()
        h, w = image.shape[:2]
        mode = int(np.random.randint(len(self.min_ious) + 1))
        if mode == 0:  # keep the whole image
            return NoOpTransform()
        min_iou = self.min_ious[mode - 1]
        min_w = min(w, max(1, int(math.ceil(self.min_crop_size * w - 1e-9))))
        min_h = min(h, max(1, int(math.ceil(self.min_crop_size * h - 1e-9))))
        lo_ar, hi_ar = self.aspect_ratio_range
        for _ in range(self.max_trials):
            cw = int(np.random.randint(min_w, w + 1))
            ch = int(np.random.randint(min_h, h + 1))
            if not (lo_ar <= ch / cw <= hi_ar):
                continue
            x0 = int(np.random.randint(0, w - cw + 1))
            y0 = int(np.random.randint(0, h - ch + 1))
            crop = np.array([x0, y0, x0 + cw, y0 + ch], dtype=np.float64)
            if _iou_with_box(crop, boxes).min() < min_iou:
                continue
            if not _center_inside(boxes, *crop).any():
                continue
            return CropTransform(x0, y0, cw, ch, orig_w=w, orig_h=h)
        return NoOpTransform()


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
    image_format = _check_image_format(image_format)
    if mean is None:
        if image_format == "RGB":
            mean = DEFAULT_PIXEL_MEAN_BGR[::-1]
        elif image_format == "L":
            mean = (float(np.mean(DEFAULT_PIXEL_MEAN_BGR)),)
        else:
            mean = DEFAULT_PIXEL_MEAN_BGR
    mean = _check_fill("mean", mean)
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
