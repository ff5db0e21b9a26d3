"""The adaptive-threshold evaluation hook."""
import logging
from typing import Callable, Dict, Optional, Sequence

import torch

from detectron2.engine import hooks

from .threshold_comparison import describe_thresholds
from .thresholds import apply_adaptive_thresholds

__all__ = ["AdaptiveThresholdEvalHook", "threshold_scalars"]

logger = logging.getLogger("scratchdet")


def threshold_scalars(thresholds: torch.Tensor, class_names: Optional[Sequence[str]] = None,
                      prefix: str = "score_threshold/adaptive") -> Dict[str, float]:
    """Scalars to log: one value when all classes share it, else one per class name."""
    t = [float(x) for x in thresholds]
    if min(t) == max(t):
        return {prefix: t[0]}
    names = list(class_names) if class_names and len(class_names) == len(t) else \
        [str(i) for i in range(len(t))]
    return {f"{prefix}/{n}": v for n, v in zip(names, t)}


class AdaptiveThresholdEvalHook(hooks.EvalHook):
    """
    Detectron2's :class:`~detectron2.engine.hooks.EvalHook` that, before every
    evaluation, sets the model's test score thresholds from its foreground prior (rule
    ``rule``: "global", "per_class", or ``None`` for the head's own) and logs them to the
    event storage as ``score_threshold/adaptive[/<class>]`` (TensorBoard and
    metrics.json), next to the results the evaluation function returns.

    The thresholds stay set after the evaluation: the next checkpoint carries what was
    evaluated. Models without a prior are evaluated as they are, with a warning.
    """

    def __init__(self, eval_period: int, eval_function: Callable[[], Dict], model,
                 rule: Optional[str] = None, class_names: Optional[Sequence[str]] = None,
                 eval_after_train: bool = True):
        super().__init__(eval_period, eval_function, eval_after_train=eval_after_train)
        self.model = model
        self.rule = rule
        self.class_names = class_names
        self.last_thresholds: Optional[torch.Tensor] = None

    def _do_eval(self):
        thr = apply_adaptive_thresholds(self.model, self.rule)
        self.last_thresholds = thr
        if thr is None:
            logger.warning("adaptive threshold: the model has no foreground prior; "
                           "evaluating with its own test_score_thresh")
        else:
            logger.info("adaptive score threshold at iteration %d: %s",
                        self.trainer.iter, describe_thresholds(thr))
            self.trainer.storage.put_scalars(
                **threshold_scalars(thr, self.class_names), smoothing_hint=False)
        super()._do_eval()
