"""Helpers shared by the benchmarks: command line, environment record, configs, the
fixed input batch, timing, memory, summaries, the printed table and the JSON file."""
import argparse
import copy
import datetime
import gc
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
SCHEMA_VERSION = 1

# keys every benchmark JSON has (the tests check them)
RECORD_KEYS = ("benchmark", "schema_version", "command", "argv", "started", "wall_time_s",
               "device", "versions", "settings", "repeats", "comparisons")
COMPARISON_KEYS = ("name", "metric", "unit", "a", "b", "a_per_repeat", "b_per_repeat",
                   "a_summary", "b_summary", "ratio_per_repeat", "ratio", "target", "status")


# -- command line -----------------------------------------------------------------------
def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_parser(name: str, description: str, default_repeats: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=os.path.join("output", "benchmarks", f"{name}.json"),
                   help="JSON file to write (default: %(default)s, relative to the cwd)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"A/B repeats (default {default_repeats}; 2 with --quick)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda if available, else cpu")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings that only check the benchmark runs (for the tests)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default on CPU: 1; 0 keeps torch's own, one "
                   "per usable CPU, as train_net.py uses). On a shared machine a multi-threaded "
                   "op waits for whichever of its threads is descheduled: small ops slow down "
                   "10-25x, large ones far less, which biases the ratios and can multiply the "
                   "run time; one thread is steady. On CUDA the default keeps torch's own")
    p.set_defaults(_default_repeats=default_repeats)
    return p


def finish_args(args):
    """Fill the defaults that depend on --quick / the machine; check --device."""
    import torch

    if args.repeats is None:
        args.repeats = 2 if args.quick else args._default_repeats
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    if args.device is None:
        args.device = default_device()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else 0
    set_threads(args.threads)
    warn_if_busy()
    return args


def choose(value: str, known: Sequence[str], what: str) -> List[str]:
    """The comma-separated names of ``value``, each one of ``known``; an unknown one stops
    the benchmark with the choices."""
    names = [x.strip() for x in value.split(",") if x.strip()]
    unknown = [x for x in names if x not in known]
    if unknown:
        raise SystemExit(f"unknown {what}(s) {unknown}; choose from {list(known)}")
    return names


def set_threads(threads: Optional[int]) -> None:
    """``torch.set_num_threads(threads)``; 0 or None keeps torch's default."""
    import torch

    if threads is not None and threads < 0:
        raise SystemExit("--threads must be >= 0")
    if threads:
        torch.set_num_threads(threads)


def busy() -> Optional[Dict]:
    """The 1-minute load average and the usable CPUs when the first exceeds the second
    (other processes compete for the cores), else None."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"load_average_1min": round(load, 2), "cpus": cpus} if load > cpus + 0.5 else None


def warn_if_busy() -> None:
    import torch

    b = busy()
    if b and torch.get_num_threads() > 1:
        print(f"WARNING: the machine is busy (load {b['load_average_1min']} on {b['cpus']} CPUs) "
              f"and torch uses {torch.get_num_threads()} threads: parallel ops wait for "
              "descheduled threads, which inflates small ops far more than large ones and "
              "biases the ratios. Rerun on a quiet machine, or with --threads 1.",
              file=sys.stderr, flush=True)


# -- environment ----------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*cmd) -> Optional[str]:
    try:
        out = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str) -> Dict:
    """What the numbers were measured on: device, threads, load, versions."""
    import numpy
    import torch

    import detectron2

    dev = {"type": device, "cpu_model": _cpu_model(), "processor": platform.processor(),
           "cpu_count": os.cpu_count(), "torch_num_threads": torch.get_num_threads()}
    if hasattr(os, "sched_getaffinity"):
        dev["cpus_usable"] = len(os.sched_getaffinity(0))
    try:  # how busy the (possibly shared) machine was when the run started
        dev["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if device == "cuda":
        dev["name"] = torch.cuda.get_device_name(torch.cuda.current_device())
        dev["cuda"] = torch.version.cuda
        dev["cudnn"] = torch.backends.cudnn.version()
    else:
        dev["name"] = f"{dev['cpu_model']} ({dev.get('cpus_usable', os.cpu_count())} CPUs)"
    status = _git("status", "--porcelain")
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
    }
    return dict(device=dev, versions=versions)


# -- summaries, comparisons, table, JSON -----------------------------------------------
def summary(values: Sequence[float]) -> Dict:
    v = [float(x) for x in values]
    if not v:
        return {"n": 0, "median": None, "min": None, "max": None, "mean": None}
    return {"n": len(v), "median": statistics.median(v), "min": min(v), "max": max(v),
            "mean": statistics.fmean(v)}


def comparison(name: str, metric: str, unit: str, a: str, b: str, a_values: Sequence[float],
               b_values: Sequence[float], target: Optional[float] = None,
               raw: Optional[Dict] = None, note: Optional[str] = None) -> Dict:
    """One A/B comparison: per-repeat values of A and B (in ``unit``), their ratios A/B
    and the summary of the ratios (median, min, max over repeats). ``status`` compares
    the median ratio with ``target`` (PASS when <=); there is no assertion."""
    if len(a_values) != len(b_values):
        raise ValueError(f"{name}: {len(a_values)} A values but {len(b_values)} B values")
    ratios = [x / y if y else float("nan") for x, y in zip(a_values, b_values)]
    r = summary(ratios)
    status = None
    if target is not None and r["median"] is not None:
        status = "PASS" if r["median"] <= target else "FAIL"
    out = {"name": name, "metric": metric, "unit": unit, "a": a, "b": b,
           "a_per_repeat": [float(x) for x in a_values],
           "b_per_repeat": [float(x) for x in b_values],
           "a_summary": summary(a_values), "b_summary": summary(b_values),
           "ratio_per_repeat": ratios, "ratio": r, "target": target, "status": status}
    if raw is not None:
        out["raw"] = raw
    if note:
        out["note"] = note
    return out


def _fmt(x, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if unit == "MB":
        return f"{x:.0f} MB"
    if unit == "s":
        return f"{x * 1000:.1f} ms" if abs(x) < 1 else f"{x:.2f} s"
    if unit == "img/s":
        return f"{x:.1f} img/s"
    return f"{x:.3g} {unit}".strip()


def print_table(title: str, comparisons: List[Dict], file=None) -> str:
    """A plain-text table: one row per comparison (medians over repeats)."""
    rows = [["comparison", "metric", "A (median)", "B (median)", "A/B median [min, max]",
             "target", "status"]]
    for c in comparisons:
        r = c["ratio"]
        rng = "-" if r["median"] is None else (
            f"{r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}] (n={r['n']})")
        rows.append([c["name"], c["metric"], _fmt(c["a_summary"]["median"], c["unit"]),
                     _fmt(c["b_summary"]["median"], c["unit"]), rng,
                     "-" if c["target"] is None else f"<= {c['target']:.2f}",
                     c["status"] or "-"])
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = [title, ""]
    for k, row in enumerate(rows):
        lines.append(" | ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
        if k == 0:
            lines.append("-+-".join("-" * w for w in widths))
    lines.append("")
    seen = set()
    for c in comparisons:
        if (c["name"], c["a"], c["b"]) in seen:
            continue
        seen.add((c["name"], c["a"], c["b"]))
        lines.append(f"  {c['name']}: A = {c['a']}")
        lines.append(f"  {' ' * len(c['name'])}  B = {c['b']}")
        if c.get("check"):  # e.g. whether the variants' outputs agree
            lines.append(f"  {' ' * len(c['name'])}  {c['check']}")
    text = "\n".join(lines)
    print(text, file=file or sys.stdout, flush=True)
    return text


def write_record(path: str, record: Dict) -> str:
    """Write ``record`` as JSON (atomically); returns the absolute path."""
    from scratchdet.io import atomic_write

    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: json.dump(record, f, indent=2, default=_json_default,
                                           allow_nan=True), mode="w")
    return path


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
    except ImportError:
        pass
    return str(o)


def make_record(name: str, args, settings: Dict, comparisons: List[Dict], started: float,
                env: Dict, **extra) -> Dict:
    rec = {
        "benchmark": name,
        "schema_version": SCHEMA_VERSION,
        "command": " ".join(shlex.quote(x) for x in [os.path.basename(sys.executable), "-m",
                                                      f"benchmarks.{name}"] + sys.argv[1:]),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - started, 2),
        "device": env["device"],
        "versions": env["versions"],
        "settings": dict(settings, repeats=args.repeats, quick=bool(args.quick),
                         device=args.device, threads=args.threads),
        "repeats": args.repeats,
        "comparisons": comparisons,
    }
    try:
        rec["device"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    rec.update(extra)
    return rec


def finish(name: str, args, settings: Dict, comparisons: List[Dict], started: float,
           env: Dict, title: str, **extra) -> int:
    """The end of every benchmark: the record (:func:`make_record`), the table under
    ``title``, the JSON file at ``args.output``. Returns 0 (the exit status)."""
    rec = make_record(name, args, settings, comparisons, started, env, **extra)
    print()
    print_table(f"{title} ({env['device']['name']}, {args.repeats} repeats)", comparisons)
    path = write_record(args.output, rec)
    print(f"\nwritten {path} ({rec['wall_time_s']:.0f} s)")
    return 0


# -- configs ----------------------------------------------------------------------------
def coco_mini_overrides() -> List[str]:
    """Register coco_mini's train split for configs written for COCO (as the README shows
    for tools/estimate_prior.py) and train on it."""
    from scratchdet.data import coco_mini_root

    root = coco_mini_root()
    return [f"datasets.coco_mini_train.json_file={root}/annotations/instances_train2017.json",
            f"datasets.coco_mini_train.image_root={root}/train2017",
            "dataloader.train.dataset.names=coco_mini_train"]


def load_config(rel_path: str, overrides: Sequence[str] = ()):
    """A LazyConfig of this repository (path relative to configs/), datasets registered."""
    from scratchdet.engine import load_config as _load

    return _load(os.path.join(CONFIGS, rel_path), list(overrides))


def load_zoo_config(zoo_path: str, overrides: Sequence[str] = ()):
    """A LazyConfig of Detectron2's model zoo (e.g. COCO-Detection/retinanet_R_50_FPN_1x.py),
    with ``datasets.*`` overrides registered like scratchdet's configs."""
    from detectron2 import model_zoo
    from detectron2.config import LazyConfig

    from scratchdet.data import register_datasets_from_config

    cfg = model_zoo.get_config(zoo_path)
    cfg = LazyConfig.apply_overrides(cfg, list(overrides))
    register_datasets_from_config(cfg.get("datasets", None))
    return cfg


def set_train_resize(cfg, short_side: int, max_size: int) -> None:
    """Replace the training mapper's augmentations by one fixed resize (no flip, no
    multi-scale): every step sees the same inputs, and the prior counted for the
    Sampling-Free heads is that of these inputs."""
    import detectron2.data.transforms as T
    from detectron2.config import LazyCall as L

    cfg.dataloader.train.mapper.augmentations = [
        L(T.ResizeShortestEdge)(short_edge_length=short_side, max_size=max_size)]


def fixed_batch(cfg, num_images: int):
    """The first ``num_images`` images of the config's training set (empty images are
    filtered as the loader does) through the config's training mapper: (dicts, batch)."""
    from detectron2.config import instantiate

    dicts = instantiate(cfg.dataloader.train.dataset)
    if len(dicts) < num_images:
        raise SystemExit(f"the training set has {len(dicts)} images, fewer than {num_images}")
    chosen = dicts[:num_images]
    mapper = instantiate(cfg.dataloader.train.mapper)
    return chosen, [mapper(copy.deepcopy(d)) for d in chosen]


def set_priors_from(cfg, model, dicts) -> Dict[str, float]:
    """Set the prior of every Sampling-Free head of ``model`` from ``dicts`` (counted with
    the model's anchors and matcher at the config's train resize; no cache)."""
    from scratchdet.sampling_free import initialize_priors

    counts = initialize_priors(cfg, model, force=True, dataset_dicts=dicts, use_cache=False,
                               progress=False)
    return {k: v.prior for k, v in counts.items()}


def calibrate_frozen_bn(model, batch) -> int:
    """Set every ``FrozenBatchNorm2d`` of ``model`` to the statistics of its own input on
    ``batch`` (one backbone pass; each layer's pre-hook runs after the earlier layers are
    set, so the whole stack ends up normalised). Returns the number of layers set.

    Why: Detectron2's R-50 configs freeze the norms (FrozenBN) because they start from
    ImageNet weights. Built from random weights without them, the identity FrozenBNs let
    the activations grow through the residual blocks until the RPN's boxes and scores
    are degenerate: it then keeps a handful of proposals per image and the ROI heads, the
    part Sampling-Free changes, have almost nothing to do. With the statistics set, the
    random network's activations are unit-scale, as pretrained statistics make them, and
    the RPN yields its full quota of proposals."""
    import torch
    from detectron2.layers import FrozenBatchNorm2d

    layers = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    if not layers:
        return 0

    def hook(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    handles = [m.register_forward_pre_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            model.backbone(model.preprocess_image(batch).tensor)
    finally:
        for h in handles:
            h.remove()
    return len(layers)


# -- timing and memory --------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    """Seconds that ``fn()`` takes, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def collect() -> None:
    gc.collect()


def _proc_status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> Optional[float]:
    """Current resident set size (VmRSS) in MB, or None off Linux."""
    kb = _proc_status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def peak_rss_mb() -> Dict[str, Optional[float]]:
    """The process's peak RSS: ``vmhwm`` (/proc/self/status VmHWM, resettable) and
    ``ru_maxrss`` (resource.getrusage; never reset, and after fork+exec it may include
    the parent's peak), both in MB."""
    import resource

    hwm = _proc_status_kb("VmHWM")
    return {"vmhwm": None if hwm is None else hwm / 1024.0,
            "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0: write 5
    to /proc/self/clear_refs). Returns whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _proc_status_kb("VmHWM"), _proc_status_kb("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 1024


def run_worker(module: str, payload: Dict, timeout: float = 600) -> Dict:
    """Run ``python -m <module> --worker JSON`` from the repository root in a fresh
    process (environment passed through) and return the JSON object it prints last."""
    cmd = [sys.executable, "-m", module, "--worker", json.dumps(payload)]
    p = subprocess.run(cmd, cwd=REPO, env=dict(os.environ), capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"worker {payload} failed (exit {p.returncode}):\n"
                           + p.stdout[-2000:] + p.stderr[-4000:])
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"worker {payload} printed no JSON:\n{p.stdout[-2000:]}")


def quiet_logs() -> None:
    """Keep Detectron2's and scratchdet's INFO logs and warnings out of the table."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    for name in ("detectron2", "scratchdet", "fvcore", "d2"):
        logging.getLogger(name).setLevel(logging.WARNING)
