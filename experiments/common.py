"""Shared machinery of the experiments: command line, seeding, the evaluation subset,
training with a record of per-iteration losses and gradient norms, evaluation with the
project's ``do_test``, the JSON record and the figure helpers.

Training is :func:`scratchdet.engine.lazy_train.do_train` without its checkpointer,
writers and evaluation hook (``outputs=False``): Detectron2's ``SimpleTrainer`` (with
the non-finite loss check) on the config's optimizer, train loader and
``lr_multiplier``, with ``PriorInitHook`` (counts the foreground prior of Sampling-Free
heads before the first iteration), ``IterationTimer`` and ``LRScheduler``, plus
:class:`~experiments.records.RunRecorder`, which reads the losses the trainer logs every
iteration and, right after ``backward()`` (the trainer's ``after_backward`` hook point,
before ``optimizer.step()``), the total L2 norm of the gradient of the whole model.
Evaluation is :func:`scratchdet.engine.lazy_train.do_test` (Detectron2's
``COCOEvaluator``; for Sampling-Free configs AP at the adaptive threshold and at the
fixed 0.05 from one inference pass), which also writes ``evaluation_results.json`` into
the run's directory.
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

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.engine import hooks  # noqa: E402
from tabulate import tabulate  # noqa: E402

import scratchdet  # noqa: E402,F401  (registers the shapes datasets)
from scratchdet.data.coco import register_coco_dataset  # noqa: E402
from scratchdet.data.shapes import ensure_shapes  # noqa: E402
from scratchdet.engine.lazy_train import build_model, do_test, do_train, load_config  # noqa: E402

from .records import (  # noqa: E402
    METRICS, RunRecorder, ap_metrics, finite_or_none, grad_norm_stats, null_reasons,
    sec_per_iter, tail_mean)

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
SCHEMA_VERSION = 1

logger = logging.getLogger("experiments")


# -- small helpers ----------------------------------------------------------------------
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
    Build the model (seeded), train ``cfg.train.max_iter`` iterations with ``do_train``
    and :class:`RunRecorder`, evaluate with ``do_test`` and append the run's record to
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
    recorder = RunRecorder(model, grad_norm=grad_norm, grad_change=grad_change)
    # after the prior count and the caller's hooks, all generators are reseeded, so the
    # data order (the sampler shuffles with the run's seed) and the flips depend on the
    # seed only, not on what ran before
    reseed = hooks.CallbackHook(before_train=lambda trainer: seed_all(seed + 1))
    before = list(extra_hooks(cfg, model)) if extra_hooks is not None else []

    key = os.path.basename(cfg.train.output_dir)
    progress(f"[{exp.name}] {key}: training {cfg.train.max_iter} iterations ...")
    diverged_reason, diverged_at = None, None
    t0 = time.perf_counter()
    try:
        do_train(cfg, model, extra_hooks=before + [reseed], end_hooks=[recorder],
                 sampler_seed=seed, outputs=False)
    except FloatingPointError as e:
        diverged_at = recorder.current_iter
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
    metrics = ap_metrics(results.get("bbox"))
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
        null_reasons=null_reasons(metrics, diverged_reason),
        ap_null_reason=null_reasons(metrics, diverged_reason).get("AP"),
        metrics_fixed_0_05=ap_metrics(fixed) if fixed_key == "bbox@0.05" else None,
        metrics_fixed=ap_metrics(fixed) if fixed else None,
        fixed_threshold=float(fixed_key[len("bbox@"):]) if fixed_key else None,
        metrics_segm=ap_metrics(results["segm"]) if results.get("segm") else None,
        sec_per_iter=sec_per_iter(curves["step_seconds"]),
        sec_per_iter_median=sec_per_iter(curves["step_seconds"], "median"),
        cpu_sec_per_iter=sec_per_iter(curves["step_cpu_seconds"]),
        train_seconds=round(train_seconds, 2),
        eval_seconds=round(eval_seconds, 2) if eval_seconds is not None else None,
        num_params=num_params,
        prior=prior,
        final_loss=tail_mean(curves.get("total_loss", []), 10),
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
