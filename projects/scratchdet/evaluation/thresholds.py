"""The score thresholds a detector applies at inference, and how to change them.

A detector's *detection head* is the module whose ``test_score_thresh`` filters the final
detections: the meta-architecture itself for dense detectors (RetinaNet and
:class:`~scratchdet.sampling_free.SamplingFreeRetinaNet`), the box predictor for R-CNNs
(the last stage's for Cascade R-CNN, whose ``test_score_thresh`` filters the averaged
scores).
"""
import contextlib
from typing import Optional

import torch
from torch import nn

from detectron2.modeling.meta_arch.dense_detector import DenseDetector

__all__ = [
    "detection_head",
    "num_score_classes",
    "inference_thresholds",
    "apply_adaptive_thresholds",
    "has_adaptive_thresholds",
    "score_floor",
]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def detection_head(model: nn.Module) -> nn.Module:
    """The module that applies the final score threshold of ``model``."""
    m = _unwrap(model)
    if isinstance(m, DenseDetector):
        return m
    roi_heads = getattr(m, "roi_heads", None)
    if roi_heads is not None and hasattr(roi_heads, "box_predictor"):
        if isinstance(roi_heads.box_predictor, nn.ModuleList):
            return roi_heads.box_predictor[-1]  # Cascade R-CNN: the last stage filters
        return roi_heads.box_predictor
    raise TypeError(
        f"{type(m).__name__}: no detection head with a test score threshold (expected a "
        "DenseDetector such as RetinaNet, or an R-CNN with roi_heads.box_predictor)")


def num_score_classes(model: nn.Module) -> int:
    head = detection_head(model)
    if hasattr(head, "num_classes"):
        return int(head.num_classes)
    return int(_unwrap(model).roi_heads.num_classes)


def has_adaptive_thresholds(model: nn.Module) -> bool:
    """Whether the detection head derives its thresholds from a foreground prior."""
    return hasattr(detection_head(model), "prior_state")


def inference_thresholds(model: nn.Module) -> torch.Tensor:
    """(K,) float tensor: the score threshold of each class that inference applies now."""
    head = detection_head(model)
    if hasattr(head, "score_thresholds"):
        return head.score_thresholds().detach().float().cpu().clone()
    return torch.full((num_score_classes(model),), float(head.test_score_thresh))


def apply_adaptive_thresholds(model: nn.Module,
                              rule: Optional[str] = None) -> Optional[torch.Tensor]:
    """
    Set the detection head's thresholds from its foreground prior, with ``rule``
    ("global" or "per_class"; ``None`` keeps the head's own rule). Returns the (K,)
    thresholds now in force, or ``None`` when the head has no prior to derive them from
    (no Sampling-Free head, or its prior was never set).
    """
    head = detection_head(model)
    state = getattr(head, "prior_state", None)
    if state is None:
        return None
    state.set_rule(rule or state.rule)
    if not state.is_set:
        return None
    return inference_thresholds(model)


@contextlib.contextmanager
def score_floor(model: nn.Module, thresholds: torch.Tensor):
    """
    Within the block, inference keeps every detection of class j scoring above
    ``thresholds[j]`` ((K,) tensor), whatever the head's own thresholds; restored on exit.

    Score filtering commutes with the rest of Detectron2's post-processing (top-k
    candidates by score, greedy per-class NMS, the per-image cap all keep the highest
    scores): detections at thresholds t >= ``thresholds`` are exactly these detections
    filtered at t (:func:`~scratchdet.evaluation.filter_by_score`) when t is one value for
    all classes or when ``thresholds`` equals t. For other per-class t they can differ,
    and only where a top-k or per-image cap is reached. Exact for the Sampling-Free
    RetinaNet, FCOS and (Cascade) R-CNN box heads, whose NMS
    (:func:`scratchdet.sampling_free.nms.per_class_nms`) shifts classes apart by offsets
    fixed by the image size. Detectron2's own box-head inference uses torchvision's
    ``batched_nms``, whose class-offset coordinates for small inputs round an IoU within
    about 1e-4 of the NMS threshold differently for different candidate sets, so there a
    detection can differ at that edge.
    """
    head = detection_head(model)
    k = num_score_classes(model)
    thresholds = torch.as_tensor(thresholds, dtype=torch.float32).flatten()
    if thresholds.numel() != k:
        raise ValueError(f"score_floor: expected {k} thresholds (one per class), "
                         f"got {thresholds.numel()}")
    attr = "score_floor" if hasattr(head, "score_floor") else "test_score_thresh"
    device = next(iter(_unwrap(model).parameters())).device
    old = getattr(head, attr)
    setattr(head, attr, thresholds.to(device))
    try:
        yield
    finally:
        setattr(head, attr, old)
