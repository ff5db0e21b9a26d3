"""Argument checks of the SSD augmentations: a ValueError that names the argument."""
import math
import numbers
from collections.abc import Sequence
from typing import Tuple

__all__ = ["SUPPORTED_FORMATS", "check_fill", "check_image_format", "check_prob", "check_range",
           "check_real", "is_real"]

#: channel orders an image may have ("L": one channel)
SUPPORTED_FORMATS = ("BGR", "RGB", "L")


def is_real(x) -> bool:
    """True for an int or float (numpy's too), False for a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_real(name: str, value, low=None, high=None, low_inclusive=True) -> float:
    """``value`` as a float, checked finite and within ``[low, high]`` (``(low, high]``)."""
    if not is_real(value) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    value = float(value)
    if low is not None:
        if (low_inclusive and value < low) or (not low_inclusive and value <= low):
            op = ">=" if low_inclusive else ">"
            raise ValueError(f"{name} must be {op} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")
    return value


def check_prob(name: str, value) -> float:
    """A probability in [0, 1]."""
    return check_real(name, value, 0.0, 1.0)


def check_range(name: str, value, low=0.0, low_inclusive=True) -> Tuple[float, float]:
    """A ``(lo, hi)`` pair with ``low <= lo <= hi`` (``low < lo`` unless ``low_inclusive``)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}")
    lo = check_real(f"{name}[0]", value[0], low, low_inclusive=low_inclusive)
    hi = check_real(f"{name}[1]", value[1], low, low_inclusive=low_inclusive)
    if lo > hi:
        raise ValueError(f"{name} must satisfy low <= high, got {value!r}")
    return (lo, hi)


def check_fill(name: str, value) -> Tuple[float, ...]:
    """A number or a non-empty sequence of numbers (one per channel), as a tuple."""
    if is_real(value):
        value = (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{name} must be a number or a non-empty sequence of numbers, got {value!r}")
    return tuple(check_real(f"{name}[{i}]", v) for i, v in enumerate(value))


def check_image_format(value) -> str:
    """One of :data:`SUPPORTED_FORMATS`."""
    if value not in SUPPORTED_FORMATS:
        raise ValueError(f"image_format must be one of {SUPPORTED_FORMATS}, got {value!r}")
    return value
