"""Sampling-Free's claim across detector families, at CPU scale: for each of RetinaNet,
Faster R-CNN, Cascade R-CNN, FCOS and Mask R-CNN, the stock Detectron2 loss against the
Sampling-Free form of the same model, trained the same number of iterations on the
embedded shapes data.

Every family uses the demo's narrow Root-ResNet-18-FPN (BN, random init) and the demo's
schedule shape (cosine, linear warm-up); the pair of a family differs only in what the
Sampling-Free transform changes:

- ``retinanet``: focal loss (alpha 0.25, gamma 2, bias from pi = 0.01, score 0.05) vs
  BCE over every anchor, guided scaling 1.0, prior bias, adaptive threshold, NMS 0.55;
- ``faster_rcnn`` / ``cascade_rcnn``: Detectron2's sampled RPN (256 anchors at 1:1) and
  ROI heads (at 1:3, at every cascade stage; 32 of the 128 proposals per image, as
  Detectron2's 512 of 2000) vs every anchor and every proposal, guided scaling (RPN 1.0,
  box heads 2.0), the RPN's prior bias and the box head's 1e-4 score threshold;
- ``fcos``: focal loss vs BCE over every location, guided scaling 1.0 (box GIoU loss),
  prior bias counted with FCOS's own assignment, adaptive threshold;
- ``mask_rcnn``: as Faster R-CNN (its config samples 128 of 200 proposals), with
  Detectron2's mask head on the foreground proposals in both; mask AP (``segm``) is recorded beside the box AP.

The configs are ``configs/shapes/<stock>.py`` and ``configs/shapes/sampling_free_<...>.py``
(:data:`FAMILIES`). Recorded per run: box AP (and the fixed-0.05 AP of the Sampling-Free
runs, from the same inference pass), mask AP for Mask R-CNN, the prior and thresholds,
loss curves and seconds per iteration. Summary per family and variant: mean, sample std,
min and max over seeds, and the Sampling-Free minus stock difference of the means.

Sizes:

- full (default): seeds 0, 1, 2; ``FULL['iterations']`` iterations per run at batch 8,
  the config's learning rate, evaluation on the first ``FULL['eval_images']`` validation
  images; 30 trained runs. ``--jobs 2`` trains the families in two processes of one
  thread each (the way to use a 2-core machine) and merges their records.
- ``--quick``: seed 0, a few iterations at batch 2, evaluation on 10 images: a smoke
  test of the pipeline, not a result.

``--families`` restricts the run to some families (their records and figure only).
Writes ``results.json`` and ``families.png``.
"""
import json
import os
import subprocess
import sys
from typing import Dict, List

import numpy as np

from . import common as C

NAME = "families"
FULL = dict(iterations=200, batch_size=8, eval_images=100, seeds=[0, 1, 2])
QUICK = dict(iterations=4, batch_size=2, eval_images=10, seeds=[0])


def _shapes(name: str) -> str:
    return os.path.join(C.REPO, "configs", "shapes", name + ".py")


# family -> (label, stock config, Sampling-Free config, what the stock training samples)
FAMILIES: Dict[str, tuple] = {
    "retinanet": ("RetinaNet", C.FOCAL_DEMO, C.SF_DEMO, "focal loss"),
    "faster_rcnn": ("Faster R-CNN", _shapes("faster_rcnn_root_resnet18_fpn_demo"),
                    _shapes("sampling_free_faster_rcnn_root_resnet18_fpn_demo"),
                    "sampled RPN 256 / ROI 32"),
    "cascade_rcnn": ("Cascade R-CNN", _shapes("cascade_rcnn_root_resnet18_fpn_demo"),
                     _shapes("sampling_free_cascade_rcnn_root_resnet18_fpn_demo"),
                     "sampled RPN 256 / ROI 32 per stage"),
    "fcos": ("FCOS", _shapes("fcos_root_resnet18_fpn_demo"),
             _shapes("sampling_free_fcos_root_resnet18_fpn_demo"), "focal loss"),
    "mask_rcnn": ("Mask R-CNN", _shapes("mask_rcnn_root_resnet18_fpn_demo"),
                  _shapes("sampling_free_mask_rcnn_root_resnet18_fpn_demo"),
                  "sampled RPN 256 / ROI 128"),
}
# COCO minival box AP (mask AP), R50-FPN 1x, stock -> Sampling-Free, as the paper's
# released code reports them (../shared/docs/method.md); None where we have no figure
PAPER = {
    "retinanet": dict(stock=36.4, sampling_free=36.8),
    "faster_rcnn": dict(stock=36.8, sampling_free=38.4),
    "cascade_rcnn": None,
    "fcos": None,
    "mask_rcnn": dict(stock=37.8, sampling_free=39.0, stock_mask=34.2, sampling_free_mask=34.9),
}
# relative cost of a family's pair of runs (seconds per step on one thread, measured on the
# shapes configs at batch 8), to balance --jobs
COST = {"retinanet": 2.4, "faster_rcnn": 2.4, "cascade_rcnn": 2.9, "fcos": 2.3, "mask_rcnn": 2.9}
VARIANTS = ("stock", "sampling_free")
COLORS = {"stock": "tab:gray", "sampling_free": "tab:blue"}


def summarize(runs: List[Dict], family: str) -> Dict:
    """One row per family: AP (and mask AP) mean/std/min/max per variant, the difference."""
    row = dict(family=family, label=FAMILIES[family][0], stock_loss=FAMILIES[family][3])
    for v in VARIANTS:
        rs = [r for r in runs if r["family"] == family and r["variant"] == v]
        ap = C.mean_std(r["AP"] for r in rs)
        row.update({f"{v}_AP_mean": ap["mean"], f"{v}_AP_std": ap["std"],
                    f"{v}_AP_min": ap["min"], f"{v}_AP_max": ap["max"], f"{v}_seeds": len(rs),
                    f"{v}_diverged": sum(bool(r["diverged"]) for r in rs)})
        m = C.mean_std(r.get("mask_AP") for r in rs)  # null for families without masks
        row.update({f"{v}_maskAP_mean": m["mean"], f"{v}_maskAP_std": m["std"]})
        if v == "sampling_free":
            fixed = C.mean_std((r.get("metrics_fixed") or {}).get("AP") for r in rs)
            row["sampling_free_AP_at_stock_threshold_mean"] = fixed["mean"]
    a, b = row["sampling_free_AP_mean"], row["stock_AP_mean"]
    row["delta_AP"] = None if a is None or b is None else a - b
    paper = PAPER[family]
    row["paper_delta_AP"] = None if paper is None else round(paper["sampling_free"] - paper["stock"], 2)
    row["has_masks"] = any(r.get("metrics_segm") is not None
                           for r in runs if r["family"] == family)
    a, b = row["sampling_free_maskAP_mean"], row["stock_maskAP_mean"]
    row["delta_maskAP"] = None if a is None or b is None else a - b
    row["paper_delta_maskAP"] = None
    if paper is not None and "stock_mask" in paper:
        row["paper_delta_maskAP"] = round(paper["sampling_free_mask"] - paper["stock_mask"], 2)
    return row


def _arguments(p):
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--families", nargs="+", choices=list(FAMILIES), default=None)
    p.add_argument("--jobs", type=int, default=1,
                   help="train the families in this many processes side by side (each "
                        "with --threads 1 unless --threads is given), then merge their "
                        "records into one; 2 on a 2-core machine")


def split_families(families: List[str], jobs: int) -> List[List[str]]:
    """``families`` in ``jobs`` groups of about equal cost (greedy on :data:`COST`)."""
    groups: List[List[str]] = [[] for _ in range(max(1, min(jobs, len(families))))]
    load = [0.0] * len(groups)
    for f in sorted(families, key=lambda f: -COST[f]):
        i = load.index(min(load))
        groups[i].append(f)
        load[i] += COST[f]
    return [sorted(g, key=families.index) for g in groups]


def _run_jobs(exp, args, families: List[str]) -> None:
    """Run :func:`train_family` for each group of families in its own process
    (``python -m experiments.families --families ...`` into ``<output>/jobs/<k>``) and
    collect their runs into ``exp.runs``, in :data:`FAMILIES` order."""
    procs = []
    for k, group in enumerate(split_families(families, args.jobs)):
        out = os.path.join(exp.out, "jobs", str(k))
        cmd = [sys.executable, "-m", "experiments.families", "--output", out,
               "--threads", str(args.threads or 1), "--families", *group]
        for flag, val in (("--iters", args.iters), ("--eval-images", args.eval_images)):
            if val is not None:
                cmd += [flag, str(val)]
        if args.seeds:
            cmd += ["--seeds", *map(str, args.seeds)]
        if args.quick:
            cmd.append("--quick")
        C.progress(f"[{NAME}] job {k}: {' '.join(group)} -> {C.rel(out)}")
        log = open(os.path.join(exp.out, f"job{k}.log"), "w")
        procs.append((k, out, log, subprocess.Popen(cmd, cwd=C.REPO, stdout=log,
                                                     stderr=subprocess.STDOUT)))
    runs = []
    for k, out, log, p in procs:
        code = p.wait()
        log.close()
        if code != 0:
            raise SystemExit(f"{NAME}: job {k} failed (exit {code}); see "
                             f"{os.path.join(exp.out, f'job{k}.log')}")
        with open(os.path.join(out, "results.json")) as f:
            part = json.load(f)
        for r in part["runs"]:
            r["output_dir"] = os.path.join("jobs", str(k), r["output_dir"])
        runs += part["runs"]
    exp.runs.extend(sorted(runs, key=lambda r: list(FAMILIES).index(r["family"])))


def train_family(exp, family: str, seeds: List[int], batch_size: int) -> None:
    """Train and evaluate the stock and the Sampling-Free config of ``family`` per seed."""
    label, stock_cfg, sf_cfg, _ = FAMILIES[family]
    bs = [f"dataloader.train.total_batch_size={batch_size}"]
    for seed in seeds:
        for variant, path in (("stock", stock_cfg), ("sampling_free", sf_cfg)):
            lr = float(C.load_config(path).optimizer.lr)
            cfg = C.prepare_config(path, exp, lr=lr, overrides=bs,
                                   output_dir=exp.run_dir(f"{family}_{variant}_seed{seed}"))
            run = C.train_and_evaluate(
                exp, cfg, variant=variant, seed=seed, lr=lr,
                label=f"{label}, {'Sampling-Free' if variant != 'stock' else 'stock'}",
                extra=dict(family=family, config=C.rel(path)))
            segm = run.get("metrics_segm")
            run["mask_AP"] = None if not segm else segm.get("AP")


def main(argv=None):
    exp, args, size = C.begin(NAME, __doc__, argv, FULL, QUICK, _arguments)
    seeds = args.seeds or size["seeds"]
    families = args.families or list(FAMILIES)
    exp.settings.update(
        seeds=seeds, families=families, jobs=args.jobs,
        configs={f: dict(stock=C.rel(FAMILIES[f][1]), sampling_free=C.rel(FAMILIES[f][2]))
                 for f in families})
    if args.jobs > 1:
        _run_jobs(exp, args, families)
    else:
        for family in families:
            train_family(exp, family, seeds, size["batch_size"])

    summary = [summarize(exp.runs, f) for f in families]
    columns = ["family", "stock_AP_mean", "stock_AP_std", "sampling_free_AP_mean",
               "sampling_free_AP_std", "delta_AP", "paper_delta_AP", "stock_maskAP_mean",
               "sampling_free_maskAP_mean", "delta_maskAP"]
    fig = plot(exp, summary)
    notes = [
        "AP in percent (COCOEvaluator bbox; maskAP: segm). Stock runs: the config's own "
        "score threshold (0.05; Detectron2's FCOS 0.2); Sampling-Free runs: adaptive "
        "threshold (dense heads) or the box head's 1e-4 (R-CNN); metrics_fixed holds their "
        "AP at the stock threshold (fixed_threshold) from the same pass.",
        "AP_std: sample standard deviation over seeds (null with one seed).",
        "paper_delta_AP: Sampling-Free minus stock on COCO minival, R50-FPN 1x, as the "
        "paper's released code reports them; null where no figure is available to us.",
    ]
    exp.write(summary, columns, fig, notes)
    exp.print_table(summary, columns, "Sampling-Free vs the stock loss, per detector family")
    return exp


def plot(exp, summary):
    plt = C.plt
    with_mask = [s for s in summary if s["has_masks"]]
    keys = [("AP", "box AP")] + ([("maskAP", "mask AP")] if with_mask else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(7 * len(keys), 4.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], keys):
        rows = summary if key == "AP" else with_mask
        x = np.arange(len(rows))
        for k, v in enumerate(VARIANTS):
            means = [np.nan if s.get(f"{v}_{key}_mean") is None else s[f"{v}_{key}_mean"]
                     for s in rows]
            stds = [0.0 if s.get(f"{v}_{key}_std") is None else s[f"{v}_{key}_std"] for s in rows]
            pos = x + (k - 0.5) * 0.38
            ax.bar(pos, means, 0.36, yerr=stds if any(stds) else None, capsize=4,
                   color=COLORS[v], alpha=0.85, label="stock loss" if v == "stock" else "Sampling-Free")
            for r in exp.runs:
                val = r["AP"] if key == "AP" else r.get("mask_AP")
                if r["variant"] == v and val is not None and r["family"] in [s["family"] for s in rows]:
                    i = [s["family"] for s in rows].index(r["family"])
                    ax.plot(pos[i], val, "k.", ms=5)
        ax.set_xticks(x)
        ax.set_xticklabels([s["label"] for s in rows], rotation=15)
        ax.set_title(f"{title}: mean ± std over seeds (dots: seeds)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return C.save_figure(fig, exp, "Stock loss vs Sampling-Free per detector family, shapes data")


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
