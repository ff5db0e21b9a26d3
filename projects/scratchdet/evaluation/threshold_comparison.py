"""Evaluate one pass of raw detections at several score thresholds, side by side."""
import logging
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence

import torch
from tabulate import tabulate

from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Instances

from .thresholds import apply_adaptive_thresholds, inference_thresholds, num_score_classes

__all__ = [
    "filter_by_score",
    "ThresholdComparisonEvaluator",
    "build_threshold_comparison",
    "describe_thresholds",
]

logger = logging.getLogger("scratchdet")

_TABLE_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_TABLE_TASKS = ("bbox", "segm", "keypoints")


def filter_by_score(instances: Instances, thresholds: torch.Tensor) -> Instances:
    """Keep the detections whose score is above their class's threshold ((K,) tensor),
    the same strict ``>`` Detectron2's heads apply."""
    thr = thresholds.to(instances.scores.device, instances.scores.dtype)
    return instances[instances.scores > thr[instances.pred_classes]]


def describe_thresholds(thresholds: torch.Tensor) -> str:
    """'0.0014' for one value shared by all classes, 'per class 1.2e-05..0.0031' else."""
    lo, hi = float(thresholds.min()), float(thresholds.max())
    if lo == hi:
        return f"{lo:.4g}"
    return f"per class {lo:.3g}..{hi:.3g}"


class ThresholdComparisonEvaluator(DatasetEvaluator):
    """
    Feeds the same model outputs, filtered at each of several per-class score thresholds,
    to one inner evaluator per threshold setting, so that the network runs once.

    Run the model with :func:`~scratchdet.evaluation.score_floor` at :meth:`floor` (the
    element-wise minimum of the settings) while this evaluator collects its outputs.

    ``evaluate()`` returns the primary setting's results unchanged (``{"bbox": {...}}``,
    plus ``"segm"`` for a mask model) and every other setting's under ``"<task>@<name>"``
    (e.g. ``"bbox@0.05"``, ``"segm@0.05"``), and logs one table with a row per task and
    setting. Filtering keeps every field of the kept detections (masks too).
    """

    def __init__(self, evaluators: Dict[str, DatasetEvaluator],
                 thresholds: Dict[str, torch.Tensor], primary: str,
                 labels: Optional[Dict[str, str]] = None):
        if set(evaluators) != set(thresholds) or primary not in evaluators:
            raise ValueError("ThresholdComparisonEvaluator: one evaluator and one threshold "
                             f"tensor per setting, primary among them; got {list(evaluators)}, "
                             f"{list(thresholds)}, primary={primary!r}")
        sizes = {k: tuple(v.shape) for k, v in thresholds.items()}
        if len(set(sizes.values())) != 1 or len(next(iter(sizes.values()))) != 1:
            raise ValueError(f"thresholds must be (K,) tensors of one size; got {sizes}")
        self.evaluators = OrderedDict(evaluators)
        self.thresholds = {k: v.detach().double().cpu() for k, v in thresholds.items()}
        self.primary = primary
        self.labels = dict(labels or {})
        self.last_table = ""

    def floor(self) -> torch.Tensor:
        """(K,) element-wise minimum of all settings: the threshold to run the model at."""
        return torch.stack(list(self.thresholds.values())).min(dim=0).values

    def reset(self):
        for ev in self.evaluators.values():
            ev.reset()

    def process(self, inputs, outputs):
        for name, ev in self.evaluators.items():
            thr = self.thresholds[name]
            filtered = []
            for out in outputs:
                out = dict(out)
                if "instances" in out:
                    out["instances"] = filter_by_score(out["instances"], thr)
                filtered.append(out)
            ev.process(inputs, filtered)

    def evaluate(self):
        per_setting = OrderedDict((name, ev.evaluate()) for name, ev in self.evaluators.items())
        primary = per_setting[self.primary]
        if not primary:  # non-main processes of a distributed evaluation
            return primary
        results = OrderedDict(primary)
        for name, res in per_setting.items():
            if name != self.primary:
                for task, metrics in (res or {}).items():
                    results[f"{task}@{name}"] = metrics
        self.last_table = self._table(per_setting)
        logger.info("AP at each score threshold (one inference pass):\n%s", self.last_table)
        return results

    def _table(self, per_setting) -> str:
        """One row per task (``bbox``, then ``segm``, ``keypoints`` where evaluated) and
        threshold setting, with the task's AP metrics."""
        tasks = [t for t in _TABLE_TASKS if any(t in (r or {}) for r in per_setting.values())]
        rows: List[Sequence] = []
        metrics = None
        for task in tasks or ["bbox"]:
            for name, res in per_setting.items():
                scores = (res or {}).get(task, {})
                if metrics is None:
                    metrics = [m for m in _TABLE_METRICS if m in scores]
                label = self.labels.get(name, name)
                rows.append([label, describe_thresholds(self.thresholds[name]), task]
                            + ["{:.3f}".format(scores.get(m, float("nan"))) for m in metrics])
        return tabulate(rows, headers=["threshold", "value", "task"] + list(metrics or []),
                        tablefmt="pipe", disable_numparse=True, stralign="right")


def build_threshold_comparison(
    model, make_evaluator: Callable[[bool], DatasetEvaluator], fixed: float = 0.05,
    rule: Optional[str] = None,
) -> ThresholdComparisonEvaluator:
    """
    The evaluator for ``model``: its adaptive thresholds (set from its prior with ``rule``
    first; the head's own threshold when it has no prior) as the primary setting, and
    the fixed threshold ``fixed`` next to it. ``make_evaluator(primary)`` builds one inner
    evaluator (``primary=False``: one that must not write the primary's files).
    """
    adaptive = apply_adaptive_thresholds(model, rule)
    used = inference_thresholds(model).double()
    name = "adaptive" if adaptive is not None else "model"
    k = num_score_classes(model)
    fixed_t = torch.full((k,), float(fixed), dtype=torch.float64)
    thresholds = {name: used}
    labels = {name: "adaptive (from the prior)" if adaptive is not None
              else "model's test_score_thresh"}
    if not torch.equal(used.float(), fixed_t.float()):  # as inference compares them
        fixed_name = f"{float(fixed):g}"
        thresholds[fixed_name] = fixed_t
        labels[fixed_name] = "fixed (Detectron2 default)" if fixed == 0.05 else "fixed"
        if bool((used > fixed_t).any()) and bool((used != used[0]).any()):
            logger.warning(
                "adaptive thresholds (%s) exceed the fixed %.3g for some classes: the "
                "adaptive row comes from detections at min(adaptive, fixed) and can differ "
                "from a separate pass where a top-k or per-image cap is reached",
                describe_thresholds(used), fixed)
    evaluators = {n: make_evaluator(n == name) for n in thresholds}
    return ThresholdComparisonEvaluator(evaluators, thresholds, primary=name, labels=labels)
