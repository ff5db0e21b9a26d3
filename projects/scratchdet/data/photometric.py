"""SSD's photometric distortion as a Detectron2 :class:`Augmentation`. No library has it:
Detectron2's and torchvision's brightness, contrast and saturation steps blend with a black,
mean or grey image, where SSD adds a brightness delta and scales the contrast and the HSV
saturation; Detectron2 has no hue step."""
from typing import Optional, Tuple

import cv2
import numpy as np
from fvcore.transforms.transform import NoOpTransform, Transform

from detectron2.data.transforms import Augmentation

from .arguments import check_image_format, check_prob, check_range, check_real

__all__ = ["PhotometricDistort", "PhotometricDistortTransform"]


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
        check_image_format(image_format)
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
        brightness_delta = check_real("brightness_delta", brightness_delta, 0.0)
        contrast_range = check_range("contrast_range", contrast_range)
        saturation_range = check_range("saturation_range", saturation_range)
        hue_delta = check_real("hue_delta", hue_delta, 0.0, 180.0)
        prob = check_prob("prob", prob)
        if not isinstance(swap_channels, (bool, np.bool_)):
            raise ValueError(f"swap_channels must be a bool, got {swap_channels!r}")
        swap_channels = bool(swap_channels)
        image_format = check_image_format(image_format)
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
