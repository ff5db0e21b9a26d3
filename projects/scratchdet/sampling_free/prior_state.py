"""The prior as model state: buffers that every checkpoint carries."""
import math
from typing import List

import torch
from torch import nn

from .prior import PriorCounts

__all__ = ["PriorState", "THRESHOLD_RULES", "bias_from_prior"]


def bias_from_prior(p: float) -> float:
    """The logit bias whose sigmoid is p: -log((1 - p) / p)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"prior must be in (0, 1), got {p}")
    return -math.log((1.0 - p) / p)


def _global_thresholds(fg_fraction: float, per_class: torch.Tensor) -> torch.Tensor:
    # released code: one threshold, prior x C = N_f / N
    return torch.full_like(per_class, fg_fraction)


def _per_class_thresholds(fg_fraction: float, per_class: torch.Tensor) -> torch.Tensor:
    # paper: theta_j = (N_f / N) * (N_j / sum_k N_k)
    total = per_class.sum()
    if total <= 0:
        return torch.full_like(per_class, fg_fraction)
    return fg_fraction * per_class / total


THRESHOLD_RULES = {"global": _global_thresholds, "per_class": _per_class_thresholds}


class PriorState(nn.Module):
    """
    Buffers: ``prior`` (p = N_f / N / C; -1 until set), ``class_counts`` (N_j, float64),
    ``score_thresholds`` ((K,) adaptive thresholds derived from them with ``rule``) and
    ``data_fingerprint`` (the 8 bytes of the counted data's 16-hex-digit
    :func:`~scratchdet.sampling_free.prior.prior_fingerprint`; zeros when unknown). Being
    buffers, they are saved and loaded with the model; a checkpoint written before
    ``data_fingerprint`` existed loads with it unknown (Detectron2's checkpointer reports
    it as missing and keeps the zeros).
    """

    # a str property TorchScript cannot compile (bytes); not used at inference
    __jit_unused_properties__ = ["fingerprint"]

    def __init__(self, head_classes: int, num_score_classes: int, rule: str = "global"):
        super().__init__()
        if rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold rule {rule!r} is not one of {sorted(THRESHOLD_RULES)}")
        self.head_classes = int(head_classes)
        self.rule = rule
        self.register_buffer("prior", torch.tensor(-1.0, dtype=torch.float64))
        self.register_buffer("prior_stderr", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("class_counts", torch.zeros(num_score_classes, dtype=torch.float64))
        self.register_buffer("score_thresholds", torch.zeros(num_score_classes))
        self.register_buffer("data_fingerprint", torch.zeros(8, dtype=torch.uint8))

    @property
    def is_set(self) -> bool:
        return bool(self.prior > 0)

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the data the prior was counted on; "" when unknown (a prior
        set by hand, or a checkpoint from before fingerprints were stored)."""
        b = bytes(self.data_fingerprint.cpu().tolist())
        return "" if not any(b) else b.hex()

    def require(self, owner: str) -> None:
        """Raise if training would start without a prior (the focal bias would stay)."""
        if not self.is_set:
            raise RuntimeError(
                f"{owner}: the foreground prior is not set. Train with train_net.py, or call "
                "scratchdet.sampling_free.initialize_priors(cfg, model) before the first "
                "iteration.")

    def set(self, counts: PriorCounts) -> None:
        p = counts.prior
        bias_from_prior(p)  # validates 0 < p < 1
        self.prior.fill_(p)
        self.prior_stderr.fill_(counts.stderr)
        fp = getattr(counts, "fingerprint", "") or ""
        try:
            raw = bytes.fromhex(fp) if len(fp) == 16 else bytes(8)
        except ValueError:
            raw = bytes(8)
        self.data_fingerprint.copy_(torch.tensor(list(raw), dtype=torch.uint8))
        pc = torch.as_tensor(counts.per_class, dtype=torch.float64)
        if len(pc) == len(self.class_counts):
            self.class_counts.copy_(pc)
        self._update_thresholds()

    def set_rule(self, rule: str) -> torch.Tensor:
        """Recompute ``score_thresholds`` from the stored prior with ``rule``; returns them.
        Without a prior the thresholds stay as they are."""
        if rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold rule {rule!r} is not one of {sorted(THRESHOLD_RULES)}")
        self.rule = rule
        if self.is_set:
            self._update_thresholds()
        return self.score_thresholds

    def _update_thresholds(self) -> None:
        fg_fraction = float(self.prior) * self.head_classes
        thr = THRESHOLD_RULES[self.rule](fg_fraction, self.class_counts.clone())
        self.score_thresholds.copy_(thr.to(self.score_thresholds.dtype))

    def thresholds(self) -> torch.Tensor:
        return self.score_thresholds

    def extra_repr(self) -> str:
        return f"head_classes={self.head_classes}, rule={self.rule!r}, prior={self.prior.item():.3g}"


def fill_bias(params: List[torch.Tensor], p: float) -> None:
    with torch.no_grad():
        for b in params:
            b.fill_(bias_from_prior(p))
