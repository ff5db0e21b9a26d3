"""Guided loss scaling (Sampling-Free, Chen et al. 2019).

Without sampling, the classification loss sums over every non-ignored anchor and its
magnitude swamps the regression loss. Guided scaling rescales it every iteration to the
regression loss's magnitude, with the ratio treated as a constant::

    L_cls_scaled = L_cls * stopgrad(scale * L_reg / L_cls)

so the logged value equals ``scale * L_reg`` and the gradient is the plain
cross-entropy gradient times the (detached) ratio.
"""
import math
from typing import Optional

import torch
from torch import nn

__all__ = ["GuidedLossScaler", "guided_scale"]


def guided_scale(loss_cls: torch.Tensor, loss_reg: torch.Tensor, scale: float = 1.0,
                 fallback_ratio: Optional[float] = None) -> torch.Tensor:
    """
    Returns ``loss_cls * ratio`` with ``ratio = scale * loss_reg / loss_cls`` detached.

    Edge cases (not in the paper):
    - non-finite ``loss_cls`` or ``loss_reg``: returned unscaled, so the trainer's
      non-finite-loss check sees it and stops (nothing is hidden);
    - ``loss_cls == 0`` (nothing to learn): returned as is (zero, zero gradient);
    - ``loss_reg == 0`` (no positive anchor in the batch): the ratio is
      ``fallback_ratio`` if given (e.g. a running average of earlier ratios, so
      negatives still train), else 0.
    """
    if not (torch.isfinite(loss_cls) and torch.isfinite(loss_reg)):
        return loss_cls
    c = loss_cls.detach()
    if c <= 0:
        return loss_cls
    if loss_reg.detach() <= 0:
        ratio = 0.0 if fallback_ratio is None else float(fallback_ratio)
        return loss_cls * ratio
    return loss_cls * (scale * loss_reg.detach() / c)


class GuidedLossScaler(nn.Module):
    """
    :func:`guided_scale` with a running average (momentum 0.9) of the ratio, used when a
    batch has no positive anchor. The average is a buffer, so it is checkpointed.
    """

    def __init__(self, scale: float = 1.0, momentum: float = 0.9):
        super().__init__()
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"guided loss scale must be a positive number, got {scale}")
        self.scale = float(scale)
        self.momentum = float(momentum)
        self.register_buffer("ratio_ema", torch.tensor(-1.0, dtype=torch.float64))

    def forward(self, loss_cls: torch.Tensor, loss_reg: torch.Tensor) -> torch.Tensor:
        ema = float(self.ratio_ema.item())
        fallback: Optional[float] = ema if ema > 0 else None
        out = guided_scale(loss_cls, loss_reg, self.scale, fallback_ratio=fallback)
        c, r = loss_cls.detach(), loss_reg.detach()
        if self.training and torch.isfinite(c) and torch.isfinite(r) and c > 0 and r > 0:
            ratio = float(self.scale * r / c)
            new = ratio if ema <= 0 else self.momentum * ema + (1 - self.momentum) * ratio
            self.ratio_ema.fill_(new)
        return out
