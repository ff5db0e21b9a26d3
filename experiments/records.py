"""What one training run of the experiments records: :class:`RunRecorder`, the hook that
logs the losses, the learning rate, the step times and the gradient norm of every
iteration, and the numbers computed from those curves and from the evaluation (seconds
per iteration, the tail of the loss, gradient-norm statistics, the AP metrics and why a
metric is null)."""
import math
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from detectron2.engine import HookBase

__all__ = ["METRICS", "LOSS_KEYS", "finite_or_none", "RunRecorder", "sec_per_iter",
           "ap_metrics", "null_reasons", "tail_mean", "grad_norm_stats"]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LOSS_KEYS = ("total_loss", "loss_cls", "loss_box_reg", "loss_cls_unscaled")


def finite_or_none(v):
    """float(v), or None when v is None, NaN or infinite (JSON has no NaN)."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class RunRecorder(HookBase):
    """
    Per iteration: the losses the trainer logged (``total_loss``, ``loss_cls``,
    ``loss_box_reg`` and, for Sampling-Free, ``loss_cls_unscaled``; any other ``loss*``
    term from the iteration it first appears, earlier iterations null), the learning rate,
    the wall time of the step, and with ``grad_norm`` the total L2 norm of the gradient
    of all parameters after ``backward()`` (what ``clip_grad_norm_(params, inf)``
    returns), with ``grad_change`` also ``||g_t - g_{t-1}|| / ||g_{t-1}||`` between
    consecutive iterations (different mini-batches). Step times: wall and process CPU
    time (all threads) from ``before_step`` to ``after_step`` (data loading included),
    the recorder's own compute left out. ``current_iter``: the iteration running (after
    a failed iteration, the one that failed).
    """

    def __init__(self, model, grad_norm: bool = True, grad_change: bool = False):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.grad_norm = grad_norm or grad_change
        self.grad_change = grad_change
        self.curves: Dict[str, List] = {"iteration": [], "lr": [], "step_seconds": [],
                                        "step_cpu_seconds": []}
        for k in LOSS_KEYS:
            self.curves[k] = []
        if self.grad_norm:
            self.curves["grad_norm"] = []
        if grad_change:
            self.curves["grad_change_rel"] = []
        self._prev = None
        self._pending = {}
        self._overhead = 0.0
        self._cpu_overhead = 0.0
        self._t = None
        self._cpu = None
        self.last_grad_norm = None
        self.current_iter = None  # the iteration running, or the last one run

    def before_step(self):
        self.current_iter = int(self.trainer.iter)
        self._overhead = 0.0
        self._cpu_overhead = 0.0
        self._pending = {}
        self._t = time.perf_counter()
        self._cpu = time.process_time()

    def after_backward(self):
        if not self.grad_norm:
            return
        t, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            grads = [p.grad.detach() for p in self.params if p.grad is not None]
            if grads:
                norm = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])).item()
            else:
                norm = 0.0
            self._pending["grad_norm"] = norm
            self.last_grad_norm = norm
            if self.grad_change:
                flat = torch.cat([g.reshape(-1).float() for g in grads]) if grads else None
                change = None
                if (flat is not None and self._prev is not None
                        and self._prev.numel() == flat.numel()):
                    prev_norm = torch.linalg.vector_norm(self._prev).item()
                    if prev_norm > 0:
                        change = torch.linalg.vector_norm(flat - self._prev).item() / prev_norm
                self._pending["grad_change_rel"] = change
                self._prev = flat.clone() if flat is not None else None
        self._overhead += time.perf_counter() - t
        self._cpu_overhead += time.process_time() - cpu

    def after_step(self):
        step = time.perf_counter() - self._t - self._overhead
        step_cpu = time.process_time() - self._cpu - self._cpu_overhead
        it = self.trainer.iter
        latest = self.trainer.storage.latest()
        c = self.curves
        c["iteration"].append(it)
        c["step_seconds"].append(step)
        c["step_cpu_seconds"].append(step_cpu)
        lr = latest.get("lr")
        c["lr"].append(lr[0] if lr and lr[1] == it else None)
        # the losses every model logs, and any other loss term of this iteration (the
        # stage losses of a cascade, FCOS's centerness, a mask loss, ...)
        for k in sorted(set(LOSS_KEYS) | {k for k in latest if k.startswith("loss")}):
            v = latest.get(k)
            c.setdefault(k, [None] * (len(c["iteration"]) - 1))
            c[k].append(finite_or_none(v[0]) if v and v[1] == it else None)
        for k in ("grad_norm", "grad_change_rel"):
            if k in c:
                c[k].append(finite_or_none(self._pending.get(k)))

    def trimmed(self) -> Dict[str, List]:
        """The curves without loss keys the model never logged."""
        return {k: v for k, v in self.curves.items()
                if not (k in LOSS_KEYS and all(x is None for x in v))}


def sec_per_iter(step_seconds: List[float], stat: str = "mean") -> Optional[float]:
    """Mean (or median) step time, the first two iterations (allocation, lazy init) left
    out."""
    xs = step_seconds[2:] if len(step_seconds) > 4 else step_seconds
    if not xs:
        return None
    return float(np.median(xs)) if stat == "median" else sum(xs) / len(xs)


def ap_metrics(bbox: Optional[Dict]) -> Dict:
    bbox = bbox or {}
    return {m: finite_or_none(bbox.get(m)) for m in METRICS}


def null_reasons(metrics: Dict, diverged_reason: Optional[str]) -> Dict[str, str]:
    out = {}
    for m, v in metrics.items():
        if v is not None:
            continue
        if diverged_reason:
            out[m] = diverged_reason
        elif metrics.get("AP") is None:
            out[m] = ("COCOEvaluator returned NaN: no detection above the score threshold "
                      "on the evaluation images")
        else:
            out[m] = ("COCOEvaluator returned NaN: no ground-truth box in this area range "
                      "on the evaluation images (COCO 'large' is > 96^2 px; images are 160 px)")
    return out


def tail_mean(values, n):
    xs = [v for v in values[-n:] if v is not None]
    return sum(xs) / len(xs) if xs else None


def grad_norm_stats(norms: Sequence, changes: Optional[Sequence], iterations: int) -> Dict:
    """
    How much the whole-model gradient norm varies over training (ScratchDet's argument
    for BN: smoother landscape, more stable gradients). ``window`` iterations per window
    (about 20 windows per run, at least 5 iterations each); per window the coefficient
    of variation std/mean and the ratio max/min; overall the median norm, the mean and
    the max of the window CVs, the mean max/min ratio, and the mean absolute log change
    between consecutive iterations. Windows inside the warm-up are included.
    """
    window = max(5, iterations // 20)
    g = [float(x) for x in norms if x is not None]
    windows = []
    for i in range(0, len(g), window):
        chunk = np.array(g[i:i + window])
        if len(chunk) < 2:
            continue
        m = float(chunk.mean())
        windows.append(dict(start=i, mean=m, cv=float(chunk.std() / m) if m > 0 else None,
                            max_over_min=(float(chunk.max() / chunk.min())
                                          if chunk.min() > 0 else None)))
    arr = np.array(g)
    logs = np.log(arr[arr > 0]) if len(arr) else np.array([])
    cvs = [w["cv"] for w in windows if w["cv"] is not None]
    ratios = [w["max_over_min"] for w in windows if w["max_over_min"] is not None]
    ch = [float(x) for x in (changes or []) if x is not None]
    return dict(
        window=window,
        n=len(g),
        median=float(np.median(arr)) if len(arr) else None,
        mean=float(arr.mean()) if len(arr) else None,
        std_over_mean=float(arr.std() / arr.mean()) if len(arr) and arr.mean() > 0 else None,
        max_over_min=float(arr.max() / arr.min()) if len(arr) and arr.min() > 0 else None,
        window_cv_mean=float(np.mean(cvs)) if cvs else None,
        window_cv_max=float(np.max(cvs)) if cvs else None,
        window_max_over_min_mean=float(np.mean(ratios)) if ratios else None,
        mean_abs_log_change=float(np.mean(np.abs(np.diff(logs)))) if len(logs) > 1 else None,
        grad_change_rel_median=float(np.median(ch)) if ch else None,
        windows=windows,
    )
