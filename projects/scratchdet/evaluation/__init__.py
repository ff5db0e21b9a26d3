"""Evaluation with the adaptive score threshold: the thresholds a model applies, an
evaluator that scores one inference pass at several thresholds, and the trainer hook."""
from .hooks import AdaptiveThresholdEvalHook, threshold_scalars
from .threshold_comparison import (
    ThresholdComparisonEvaluator,
    build_threshold_comparison,
    describe_thresholds,
    filter_by_score,
)
from .thresholds import (
    apply_adaptive_thresholds,
    detection_head,
    has_adaptive_thresholds,
    inference_thresholds,
    num_score_classes,
    score_floor,
)

__all__ = [
    "AdaptiveThresholdEvalHook",
    "ThresholdComparisonEvaluator",
    "apply_adaptive_thresholds",
    "build_threshold_comparison",
    "describe_thresholds",
    "detection_head",
    "filter_by_score",
    "has_adaptive_thresholds",
    "inference_thresholds",
    "num_score_classes",
    "score_floor",
    "threshold_scalars",
]
