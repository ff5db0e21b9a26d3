"""Warm-up + multi-step learning-rate multipliers."""
from fvcore.common.param_scheduler import CosineParamScheduler, MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler


def multistep(max_iter, milestones, warmup_iter=1000):
    """x1 until each milestone, then x0.1, x0.01 (linear warm-up over warmup_iter)."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0 * 0.1**i for i in range(len(milestones) + 1)],
            milestones=list(milestones) + [max_iter],
        ),
        warmup_length=warmup_iter / max_iter,
        warmup_factor=0.001,
    )


def cosine(max_iter, warmup_iter):
    """Cosine decay to 1% (short CPU schedules), linear warm-up over warmup_iter."""
    return L(WarmupParamScheduler)(
        scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.01),
        warmup_length=warmup_iter / max_iter,
        warmup_factor=0.01,
    )
