"""Shared machinery of the experiments: command line, seeding, the evaluation subset,
a training loop that records per-iteration losses and gradient norms, evaluation with
the project's ``do_test``, the JSON record and the figure helpers.

The training loop is the one of :func:`scratchdet.engine.lazy_train.do_train` without
its checkpointer, writers and evaluation hook: Detectron2's ``SimpleTrainer`` on the
config's optimizer, train loader and ``lr_multiplier``, with ``PriorInitHook`` (counts
the foreground prior of Sampling-Free heads before the first iteration),
``IterationTimer`` and ``LRScheduler``, plus :class:`RunRecorder`, which reads the
losses the trainer logs every iteration and, right after ``backward()`` (the trainer's
``after_backward`` hook point, before ``optimizer.step()``), the total L2 norm of the
gradient of the whole model. Evaluation is :func:`scratchdet.engine.lazy_train.do_test`
(Detectron2's ``COCOEvaluator``; for Sampling-Free configs AP at the adaptive threshold
and at the fixed 0.05 from one inference pass), which also writes
``evaluation_results.json`` into the run's directory.
"""
import argparse
import contextlib
import json
import logging
import math
import os
import platform
import random
import shlex
import sys
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from detectron2.config import LazyCall as L  # noqa: E402
from detectron2.config import instantiate  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.samplers import TrainingSampler  # noqa: E402
from detectron2.engine import HookBase, SimpleTrainer, hooks  # noqa: E402
from tabulate import tabulate  # noqa: E402

import scratchdet  # noqa: E402,F401  (registers the shapes datasets)
from scratchdet.data.coco import register_coco_dataset  # noqa: E402
from scratchdet.data.shapes import ensure_shapes  # noqa: E402
from scratchdet.engine.lazy_train import build_model, do_test, load_config  # noqa: E402
from scratchdet.sampling_free import PriorInitHook  # noqa: E402

__all__ = [
    "REPO", "FOCAL_DEMO", "SF_DEMO", "SSD_DEMO", "DETECTORS", "METRICS", "Experiment",
    "make_parser", "seed_all", "prepare_config", "train_and_evaluate", "grad_norm_stats",
    "finite_or_none", "smooth", "plt", "mean_std", "rel", "save_figure",
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOCAL_DEMO = os.path.join(REPO, "configs", "shapes", "scratchdet_root_resnet18_fpn_demo.py")
SF_DEMO = os.path.join(REPO, "configs", "shapes", "sampling_free_root_resnet18_fpn_demo.py")
SSD_DEMO = os.path.join(REPO, "configs", "shapes", "scratchdet300_root_resnet18_demo.py")
# the detectors the ScratchDet studies train (--detector): config, and what it is
DETECTORS = {
    "retinanet": (FOCAL_DEMO, "Root-ResNet-18-FPN RetinaNet, focal loss"),
    "ssd": (SSD_DEMO, "ScratchDet300-style SSD, MultiBox loss"),
}
VAL = "scratchdet_shapes_val"
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SCHEMA_VERSION = 1
LOSS_KEYS = ("total_loss", "loss_cls", "loss_box_reg", "loss_cls_unscaled")

logger = logging.getLogger("experiments")


# -- small helpers ----------------------------------------------------------------------
def finite_or_none(v):
    """float(v), or None when v is None, NaN or infinite (JSON has no NaN)."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def mean_std(values: Iterable) -> Dict:
    """Mean, sample standard deviation (n-1; None for one value), min, max, n of the
    non-None values."""
    xs = [float(x) for x in values if x is not None]
    if not xs:
        return dict(mean=None, std=None, min=None, max=None, n=0)
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return dict(mean=m, std=sd, min=min(xs), max=max(xs), n=len(xs))


def smooth(values: Sequence, window: int) -> np.ndarray:
    """Trailing moving average (NaN for missing values are skipped)."""
    x = np.array([np.nan if v is None else v for v in values], dtype=float)
    if window <= 1 or len(x) == 0:
        return x
    out = np.empty_like(x)
    for i in range(len(x)):
        chunk = x[max(0, i - window + 1): i + 1]
        chunk = chunk[np.isfinite(chunk)]
        out[i] = chunk.mean() if len(chunk) else np.nan
    return out


def rel(path: str) -> str:
    """``path`` relative to the repository root."""
    return os.path.relpath(os.path.abspath(path), REPO)


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (the data loader's flips use NumPy)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _setup_logging(log_file: str) -> None:
    """Detectron2's and scratchdet's INFO logs go to ``log_file`` only (the console keeps
    the experiment's own progress lines and tables)."""
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s"))
    for name in ("detectron2", "scratchdet", "fvcore", "experiments"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.INFO)
        lg.propagate = False
        for h in list(lg.handlers):
            if getattr(h, "_experiments", False):
                lg.removeHandler(h)
        handler._experiments = True
        lg.addHandler(handler)


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- command line and the record ----------------------------------------------------------
def make_parser(name: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke-test sizes (a minute on 2 CPU cores); same JSON schema and figure")
    p.add_argument("--output", default=None,
                   help=f"output directory (default output/experiments/{name}/)")
    p.add_argument("--iters", type=int, default=None,
                   help="iterations per training run (overrides the mode's size)")
    p.add_argument("--eval-images", type=int, default=None,
                   help="evaluate on the first N of the 200 validation images (0 = all)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 gives steadier timings on a "
                        "shared machine)")
    return p


def begin(name: str, doc: str, argv: Optional[Sequence[str]], full: Dict, quick: Dict,
          add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None,
          detectors: bool = False):
    """
    An experiment's start: its command line (the common flags of :func:`make_parser` and
    those ``add_arguments(parser)`` adds), its mode's sizes (``quick`` with ``--quick``,
    else ``full``: iterations, batch_size, eval_images, ...) and its :class:`Experiment`,
    whose settings the caller completes. Returns (experiment, args, size).

    With ``detectors``, ``--detector`` chooses one of :data:`DETECTORS` (``args.detector``);
    a detector other than the first records as experiment ``{name}_{detector}`` (its own
    output directory, JSON and figure).
    """
    parser = make_parser(name, doc)
    if detectors:
        parser.add_argument("--detector", choices=list(DETECTORS), default=list(DETECTORS)[0],
                            help="; ".join(f"{k}: {v[1]} ({rel(v[0])})"
                                           for k, v in DETECTORS.items()))
    if add_arguments is not None:
        add_arguments(parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    size = quick if args.quick else full
    record = name
    if detectors and args.detector != list(DETECTORS)[0]:
        record = f"{name}_{args.detector}"
    exp = Experiment(record, args, iterations=size["iterations"],
                     eval_images=size["eval_images"],
                     settings=dict(batch_size=size["batch_size"]), argv=argv, module=name)
    if detectors:
        config, what = DETECTORS[args.detector]
        exp.settings.update(detector=args.detector, detector_label=what, config=rel(config))
    return exp, args, size


class Experiment:
    """Output directory, mode, command line, evaluation dataset and the JSON record."""

    def __init__(self, name: str, args, *, iterations: int, eval_images: int,
                 settings: Optional[Dict] = None, argv: Optional[Sequence[str]] = None,
                 module: Optional[str] = None):
        self.name = name
        self.args = args
        self.mode = "quick" if args.quick else "full"
        self.iterations = int(args.iters if args.iters is not None else iterations)
        n = int(args.eval_images if args.eval_images is not None else eval_images)
        self.out = os.path.abspath(args.output or os.path.join(REPO, "output", "experiments", name))
        os.makedirs(self.out, exist_ok=True)
        self.command = " ".join(["python", "-m", f"experiments.{module or name}"]
                                + [shlex.quote(str(a)) for a in
                                   (sys.argv[1:] if argv is None else argv)])
        self.t0 = time.time()
        if getattr(args, "threads", None):
            torch.set_num_threads(int(args.threads))
        self.runs: List[Dict] = []
        _setup_logging(os.path.join(self.out, "log.txt"))
        self.eval_dataset, self.eval_images = self._eval_dataset(n)
        self.settings = dict(iterations=self.iterations, eval_dataset=self.eval_dataset,
                             eval_images=self.eval_images)
        self.settings.update(settings or {})

    def _eval_dataset(self, n: int):
        """``scratchdet_shapes_val``, or a COCO file of its first ``n`` images registered
        as ``scratchdet_shapes_val_first{n}`` (COCOEvaluator then scores exactly those)."""
        ann = ensure_shapes(VAL)
        with open(ann) as f:
            coco = json.load(f)
        total = len(coco["images"])
        if n <= 0 or n >= total:
            return VAL, total
        images = sorted(coco["images"], key=lambda im: im["id"])[:n]
        ids = {im["id"] for im in images}
        sub = dict(coco, images=images,
                   annotations=[a for a in coco["annotations"] if a["image_id"] in ids])
        name = f"{VAL}_first{n}"
        path = os.path.join(self.out, "data", name + ".json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(sub, f)
        os.replace(tmp, path)
        register_coco_dataset(name, path, MetadataCatalog.get(VAL).image_root)
        DatasetCatalog.get(name)  # sets thing_classes / id mapping in the metadata now
        return name, n

    def run_dir(self, key: str) -> str:
        return os.path.join(self.out, "runs", key)

    def write(self, summary: List[Dict], columns: Sequence[str], figure: str,
              notes: Sequence[str] = ()) -> str:
        import detectron2

        record = dict(
            experiment=self.name,
            schema_version=SCHEMA_VERSION,
            command=self.command,
            mode=self.mode,
            settings=self.settings,
            environment=dict(python=platform.python_version(), torch=torch.__version__,
                             detectron2=detectron2.__version__,
                             torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count()),
            runs=self.runs,
            summary_columns=list(columns),
            summary=summary,
            figure=os.path.basename(figure),
            notes=list(notes),
            wall_seconds=round(time.time() - self.t0, 1),
        )
        path = os.path.join(self.out, "results.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(_jsonable(record), f, indent=1, allow_nan=False)
        os.replace(tmp, path)
        return path

    def print_table(self, summary: List[Dict], columns: Sequence[str], title: str) -> None:
        rows = [[_fmt(r.get(c)) for c in columns] for r in summary]
        print(f"\n{title} ({self.mode} mode, {self.iterations} iterations per run, "
              f"eval on {self.eval_images} val images)")
        print(tabulate(rows, headers=list(columns), tablefmt="github", disable_numparse=True))
        print(f"\nresults: {os.path.join(self.out, 'results.json')}")
        print(f"figure:  {os.path.join(self.out, self.name + '.png')}")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return f"{v:.3g}"
    return str(v)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, type(None), str)):
        return x
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return finite_or_none(x)
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return finite_or_none(x.item())
    return str(x)


# -- configs --------------------------------------------------------------------------------
def prepare_config(config_file: str, exp: Experiment, *, lr: float, output_dir: str,
                   overrides: Sequence[str] = ()):
    """The config with the experiment's size: ``train.max_iter``, ``optimizer.lr``, the
    evaluation dataset, no periodic evaluation or checkpoint, CPU. The learning-rate
    schedule is the config's (cosine with linear warm-up over the same fraction of the
    run, 50/600 for the demo configs)."""
    cfg = load_config(config_file, overrides)
    cfg.train.device = "cpu"
    cfg.train.max_iter = exp.iterations
    cfg.train.output_dir = output_dir
    cfg.train.eval_period = 0
    cfg.optimizer.lr = float(lr)
    cfg.dataloader.test.dataset.names = exp.eval_dataset
    cfg.dataloader.train.num_workers = 0
    cfg.dataloader.test.num_workers = 0
    return cfg


def warmup_iters(cfg) -> int:
    try:
        return int(round(float(cfg.lr_multiplier.warmup_length) * cfg.train.max_iter))
    except Exception:  # a schedule without warm-up
        return 0


# -- the training loop ------------------------------------------------------------------------
class _Reseed(HookBase):
    """Reseeds all generators right before the first iteration (after the prior count),
    so the data order and flips depend on the seed only, not on what ran before."""

    def __init__(self, seed: int):
        self.seed = seed

    def before_train(self):
        seed_all(self.seed + 1)


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
    the recorder's own compute left out.
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

    def before_step(self):
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


def _sec_per_iter(step_seconds: List[float], stat: str = "mean") -> Optional[float]:
    """Mean (or median) step time, the first two iterations (allocation, lazy init) left
    out."""
    xs = step_seconds[2:] if len(step_seconds) > 4 else step_seconds
    if not xs:
        return None
    return float(np.median(xs)) if stat == "median" else sum(xs) / len(xs)


def _metrics(bbox: Optional[Dict]) -> Dict:
    bbox = bbox or {}
    return {m: finite_or_none(bbox.get(m)) for m in METRICS}


def _null_reasons(metrics: Dict, diverged_reason: Optional[str]) -> Dict[str, str]:
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


def train_and_evaluate(
    exp: Experiment,
    cfg,
    *,
    variant: str,
    seed: int,
    lr: float,
    label: Optional[str] = None,
    modify_model: Optional[Callable] = None,
    extra_hooks: Callable = None,
    grad_norm: bool = False,
    grad_change: bool = False,
    extra: Optional[Dict] = None,
) -> Dict:
    """
    Build the model (seeded), train ``cfg.train.max_iter`` iterations with
    :class:`RunRecorder`, evaluate with ``do_test`` and append the run's record to
    ``exp.runs``.

    ``modify_model(model)`` runs after building (e.g. swap the guided scaler);
    ``extra_hooks(cfg, model)`` returns hooks run right after ``PriorInitHook`` (e.g.
    reset the bias it set). A run whose loss becomes non-finite is recorded as diverged
    (the trainer stops it before the optimizer step), with AP null and the reason.
    """
    seed_all(seed)
    model = build_model(cfg)
    if modify_model is not None:
        modify_model(model)
    num_params = sum(p.numel() for p in model.parameters())
    model.train()
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    # the sampler's shuffle seed from the run's seed (else detectron2 draws one from numpy)
    num_train = len(instantiate(cfg.dataloader.train.dataset))
    cfg.dataloader.train.sampler = L(TrainingSampler)(size=num_train, shuffle=True, seed=seed)
    loader = instantiate(cfg.dataloader.train)
    trainer = SimpleTrainer(model, loader, optim)
    recorder = RunRecorder(model, grad_norm=grad_norm, grad_change=grad_change)
    trainer.register_hooks(
        [PriorInitHook(cfg, model)]
        + (list(extra_hooks(cfg, model)) if extra_hooks is not None else [])
        + [_Reseed(seed), hooks.IterationTimer(),
           hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)), recorder])

    key = os.path.basename(cfg.train.output_dir)
    progress(f"[{exp.name}] {key}: training {cfg.train.max_iter} iterations ...")
    diverged_reason, diverged_at = None, None
    t0 = time.perf_counter()
    try:
        trainer.train(0, int(cfg.train.max_iter))
    except FloatingPointError as e:
        diverged_at = int(trainer.iter)
        diverged_reason = f"diverged: non-finite loss at iteration {diverged_at}"
        logger.warning("%s: %s (%s)", key, diverged_reason, str(e).splitlines()[0])
    train_seconds = time.perf_counter() - t0
    curves = recorder.trimmed()
    if diverged_at is not None:  # the failing iteration raised inside run_step
        done = diverged_at
    else:
        done = len(curves["iteration"])

    results, eval_seconds = {}, None
    if diverged_reason is None:
        t1 = time.perf_counter()
        # pycocotools prints its summary on stdout: keep it in the log, not in the table
        with open(os.path.join(exp.out, "log.txt"), "a") as log, \
                contextlib.redirect_stdout(log):
            results = do_test(cfg, model, iteration=done)
        eval_seconds = time.perf_counter() - t1
    metrics = _metrics(results.get("bbox"))
    # the fixed threshold the evaluation scored beside the adaptive one (0.05; FCOS: 0.2)
    fixed_key = next((k for k in results if k.startswith("bbox@")), None)
    fixed = results.get(fixed_key) if fixed_key else None
    prior = None
    if hasattr(model, "prior_state") and model.prior_state.is_set:
        prior = dict(prior=float(model.prior_state.prior),
                     score_thresholds=[float(x) for x in model.prior_state.thresholds()])
    run = dict(
        variant=variant,
        label=label or variant,
        lr=float(lr),
        seed=int(seed),
        max_iter=int(cfg.train.max_iter),
        iterations=done,
        warmup_iters=warmup_iters(cfg),
        diverged=diverged_reason is not None,
        diverged_at=diverged_at,
        metrics=metrics,
        AP=metrics["AP"],
        APs=metrics["APs"],
        null_reasons=_null_reasons(metrics, diverged_reason),
        ap_null_reason=_null_reasons(metrics, diverged_reason).get("AP"),
        metrics_fixed_0_05=_metrics(fixed) if fixed_key == "bbox@0.05" else None,
        metrics_fixed=_metrics(fixed) if fixed else None,
        fixed_threshold=float(fixed_key[len("bbox@"):]) if fixed_key else None,
        metrics_segm=_metrics(results["segm"]) if results.get("segm") else None,
        sec_per_iter=_sec_per_iter(curves["step_seconds"]),
        sec_per_iter_median=_sec_per_iter(curves["step_seconds"], "median"),
        cpu_sec_per_iter=_sec_per_iter(curves["step_cpu_seconds"]),
        train_seconds=round(train_seconds, 2),
        eval_seconds=round(eval_seconds, 2) if eval_seconds is not None else None,
        num_params=num_params,
        prior=prior,
        final_loss=_tail_mean(curves.get("total_loss", []), 10),
        output_dir=os.path.relpath(cfg.train.output_dir, exp.out),
        curves=curves,
    )
    if grad_norm or grad_change:
        run["grad_norm_stats"] = grad_norm_stats(
            curves.get("grad_norm", []), curves.get("grad_change_rel"), exp.iterations)
    if extra:
        run.update(extra)
    exp.runs.append(run)
    ap = "-" if run["AP"] is None else f"{run['AP']:.2f}"
    progress(f"[{exp.name}] {key}: AP {ap}, {run['sec_per_iter'] or float('nan'):.3f} s/iter"
             + (f", {diverged_reason}" if diverged_reason else ""))
    return run


def _tail_mean(values, n):
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


def save_figure(fig, exp: Experiment, title: Optional[str] = None) -> str:
    """Save ``fig`` as ``<output>/<experiment>.png``; with ``title``, first give it that
    title followed by the run's sizes (mode, iterations, seeds, evaluation images)."""
    if title is not None:
        seeds = exp.settings.get("seeds")
        fig.suptitle(f"{title} ({exp.mode}, {exp.iterations} iterations, "
                     + (f"{len(seeds)} seed(s), " if seeds else "")
                     + f"eval on {exp.eval_images} images)")
        fig.tight_layout()
    path = os.path.join(exp.out, exp.name + ".png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
