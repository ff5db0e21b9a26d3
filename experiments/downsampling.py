"""ScratchDet's downsampling study at CPU scale: how much does the stem's early
downsampling cost, especially on small objects?

The four stem settings of ``scratchdet.backbone.DOWNSAMPLING_STUDY`` (the paper's
Table 4: ResNet-18 73.1, no max-pool 75.3, conv1 stride 1 77.6, Root-ResNet-18 78.5
mAP, SSD300 on VOC 2007 from scratch) are swapped into the demo detector
(``configs/shapes/scratchdet_root_resnet18_fpn_demo.py``: narrow ResNet-18 stages
32..256 with BN, FPN and head 64 with BN, focal loss, random init) and trained on the
embedded shapes data:

======================  ==================  ============  =========================
setting                 stem                stem stride   FPN inputs (strides)
======================  ==================  ============  =========================
resnet18                7x7/2 + 3x3/2 pool  4             res2..res5 (4..32) + p6
no_maxpool              7x7/2               2             res3..res5 (4..16) + p5,p6
conv1_stride1           7x7/1               1             res4, res5 (4, 8) + p4..p6
root_resnet18           3 x 3x3/1 (32 ch)   1             res4, res5 (4, 8) + p4..p6
======================  ==================  ============  =========================

The detection levels stay p2..p6 (strides 4..64) with the demo's anchors and head
whatever the stem, as the project's paper-scale study (``configs/study/``) keeps the
SSD maps at 38..1: the stages whose stride is at least 4 feed the FPN and stride-2 3x3
convs on the last FPN level add the missing coarser levels (Detectron2's
``LastLevelP6P7`` when two are missing, its generalisation otherwise). So every setting
computes the whole ResNet-18 and detects on the same grid; what changes is how much
resolution the stem throws away before the residual stages, and the cost. (The
paper-scale SSD300 versions in ``configs/study/`` are too slow for a CPU.)

``--detector ssd`` runs the study on the paper's own detector instead
(``configs/shapes/scratchdet300_root_resnet18_demo.py``: ScratchDet300's design, Root-
ResNet-18 with SSD extra stages, SSD head with BN, MultiBox loss, at the same widths,
data and schedule), recorded as ``downsampling_ssd``: as in the paper-scale study, the
six SSD maps (40/20/10/5/3/1 for 160 px) start at the ResNet stage of stride 4, which
the stem's stride 4, 2 or 1 makes res2, res3 or res4, and extra stages fill up the six
(``scratchdet.backbone.apply_ssd_downsampling_study``).

Recorded per run: AP, APs, APm (COCOEvaluator on ``scratchdet_shapes_val``; about
half the shapes are COCO-"small"), seconds per iteration (wall time of the training
step; meaningful only on an otherwise idle machine), parameters, loss curve.

Sizes:

- full (default): 300 iterations per run at batch 8 (the config's cosine schedule with
  warm-up over the first 1/12, lr 0.03), seed 0, evaluation on all 200 validation
  images. About 20-25 min on an idle 2-core CPU: one training step of batch 8 took
  0.52 / 0.89 / 2.6 / 2.9 s on one thread for the four stems (measured), roughly
  0.3 / 0.5 / 1.5 / 1.6 s with two threads; each evaluation takes 10-20 s.
- ``--quick``: 15 iterations at batch 4, evaluation on the first 30 validation images;
  under a minute on an idle 2-core CPU. A smoke test of the pipeline, not a result.

``--threads 1`` gives steadier per-iteration timings when the machine is shared.

Writes ``results.json`` and ``downsampling.png`` (``downsampling_ssd.png``: AP, APs and
s/iter per stem) into ``output/experiments/downsampling[_ssd]/``.
"""
import math
import sys

import fvcore.nn.weight_init as weight_init
import numpy as np
import torch.nn.functional as F
from torch import nn

from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.fpn import LastLevelP6P7

from scratchdet.backbone import DOWNSAMPLING_STUDY, apply_ssd_downsampling_study

from . import common as C

NAME = "downsampling"
PAPER_MAP = {"resnet18": 73.1, "no_maxpool": 75.3, "conv1_stride1": 77.6, "root_resnet18": 78.5}
LABELS = {"resnet18": "ResNet-18 stem", "no_maxpool": "no max-pool",
          "conv1_stride1": "conv1 stride 1", "root_resnet18": "Root-ResNet-18 stem"}
FULL = dict(iterations=300, batch_size=8, eval_images=0, seeds=[0])
QUICK = dict(iterations=15, batch_size=4, eval_images=30, seeds=[0])
LR = 0.03


class LastLevelsStride2(nn.Module):
    """``num_levels`` extra FPN levels, each a 3x3 stride-2 conv of the previous one
    (ReLU in between), the first on ``in_feature``: Detectron2's ``LastLevelP6P7``
    for any number of levels (same layers, init and forward for two)."""

    def __init__(self, num_levels: int, in_channels: int, out_channels: int, in_feature: str):
        super().__init__()
        self.num_levels = int(num_levels)
        self.in_feature = in_feature
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, 2, 1)
            for i in range(self.num_levels))
        for conv in self.convs:
            weight_init.c2_xavier_fill(conv)

    def forward(self, x):
        outs = []
        for i, conv in enumerate(self.convs):
            x = conv(x if i == 0 else F.relu(x))
            outs.append(x)
        return outs


def stem_stride(study: str) -> int:
    s = DOWNSAMPLING_STUDY[study]
    return s["stem_stride"] * (1 if s["stem_pool"] == "none" else 2)


def layout(study: str, first_stride: int = 4, num_levels: int = 5):
    """(stages feeding the FPN, their strides, number of extra levels, the extra levels'
    input) for a stem setting, keeping the levels at strides first_stride * 2^k."""
    s0 = stem_stride(study)
    strides = {f"res{k}": s0 * 2 ** (k - 2) for k in range(2, 6)}
    stages = [name for name, st in strides.items() if st >= first_stride]
    extra = num_levels - len(stages)
    if extra < 0 or strides[stages[0]] != first_stride:
        raise ValueError(f"{study}: stages {strides} cannot give levels from stride {first_stride}")
    last = "p{}".format(int(math.log2(strides[stages[-1]])))
    return stages, [strides[s] for s in stages], extra, last


def apply_stem(cfg, study: str) -> dict:
    """Swap the study's stem into the demo config, FPN levels kept at the anchors' strides."""
    bb = cfg.model.backbone
    for k, v in DOWNSAMPLING_STUDY[study].items():
        bb.bottom_up[k] = v
    first = int(cfg.model.anchor_generator.strides[0])
    levels = len(cfg.model.head_in_features)
    stages, strides, extra, last = layout(study, first, levels)
    bb.bottom_up.out_features = stages
    bb.in_features = stages
    ch = int(bb.out_channels)
    if extra == 2:
        bb.top_block = L(LastLevelP6P7)(in_channels=ch, out_channels=ch, in_feature=last)
    else:
        bb.top_block = L(LastLevelsStride2)(num_levels=extra, in_channels=ch, out_channels=ch,
                                            in_feature=last)
    return dict(stem=dict(DOWNSAMPLING_STUDY[study]), stem_stride=stem_stride(study),
                fpn_inputs=stages, fpn_input_strides=strides, extra_levels=extra,
                extra_levels_from=last)


def apply_ssd_stem(cfg, study: str) -> dict:
    """Swap the study's stem into the SSD demo config, its six maps kept at their sizes."""
    stages = apply_ssd_downsampling_study(cfg.model, study, first_stride=4)
    return dict(stem=dict(DOWNSAMPLING_STUDY[study]), stem_stride=stem_stride(study),
                ssd_inputs=stages, extra_stages=len(cfg.model.backbone.extra_channels))


def _check_strides(model, cfg):
    """The backbone's levels must sit at the anchor generator's strides."""
    shapes = model.backbone.output_shape()
    got = [shapes[f].stride for f in cfg.model.head_in_features]
    want = list(cfg.model.anchor_generator.strides)
    if got != want:
        raise AssertionError(f"FPN level strides {got} != anchor strides {want}")


def main(argv=None):
    def add_arguments(parser):
        parser.add_argument("--seeds", type=int, nargs="+", default=None)
        parser.add_argument("--studies", nargs="+", default=list(DOWNSAMPLING_STUDY),
                            choices=list(DOWNSAMPLING_STUDY))

    exp, args, size = C.begin(NAME, __doc__, argv, FULL, QUICK, add_arguments, detectors=True)
    seeds = args.seeds or size["seeds"]
    layouts = {}
    config, what = C.DETECTORS[args.detector]
    ssd = args.detector == "ssd"
    inputs = "ssd_inputs" if ssd else "fpn_inputs"
    exp.settings.update(learning_rates=[LR], seeds=seeds, paper_voc07_map=PAPER_MAP,
                        layouts=layouts)
    for seed in seeds:
        for study in args.studies:
            key = f"{study}_seed{seed}"
            cfg = C.prepare_config(
                config, exp, lr=LR, output_dir=exp.run_dir(key),
                overrides=[f"dataloader.train.total_batch_size={size['batch_size']}"])
            layouts[study] = apply_ssd_stem(cfg, study) if ssd else apply_stem(cfg, study)
            C.train_and_evaluate(exp, cfg, variant=study, label=LABELS[study], seed=seed, lr=LR,
                                 modify_model=None if ssd else
                                 lambda m, cfg=cfg: _check_strides(m, cfg),
                                 extra=dict(layout=layouts[study]))

    columns = ["variant", "stem_stride", inputs, "AP", "APs", "APm", "sec_per_iter",
               "sec_per_iter_median", "cpu_sec_per_iter", "params_M", "paper_voc07_map", "runs"]
    summary = []
    for study in args.studies:
        runs = [r for r in exp.runs if r["variant"] == study]
        ap = C.mean_std(r["AP"] for r in runs)
        aps = C.mean_std(r["APs"] for r in runs)
        apm = C.mean_std(r["metrics"]["APm"] for r in runs)
        spi = C.mean_std(r["sec_per_iter"] for r in runs)
        spi_med = C.mean_std(r["sec_per_iter_median"] for r in runs)
        cpu = C.mean_std(r["cpu_sec_per_iter"] for r in runs)
        summary.append(dict(
            variant=study, label=LABELS[study], stem_stride=layouts[study]["stem_stride"],
            **{inputs: ",".join(layouts[study][inputs])},
            AP=ap["mean"], AP_std=ap["std"], APs=aps["mean"], APs_std=aps["std"],
            APm=apm["mean"], sec_per_iter=spi["mean"], sec_per_iter_median=spi_med["mean"],
            cpu_sec_per_iter=cpu["mean"],
            params_M=runs[0]["num_params"] / 1e6 if runs else None,
            paper_voc07_map=PAPER_MAP[study], runs=len(runs),
            diverged=sum(r["diverged"] for r in runs)))
    fig = plot(exp, summary)
    notes = [
        f"detector: {what} ({C.rel(config)}).",
        "AP/APs/APm in percent (COCOEvaluator bbox, the config's fixed score threshold: "
        "0.05 for the focal RetinaNet, 0.01 for the SSD); mean over seeds when several.",
        "paper_voc07_map: the paper's VOC 2007 mAP for the same stem (SSD300, different "
        "data and scale), for orientation only.",
        "sec_per_iter (sec_per_iter_median): mean (median) wall time of a training step, "
        "data loading included, first two left out, on a possibly shared machine; "
        "cpu_sec_per_iter: CPU time of the process per step (all threads).",
    ]
    exp.write(summary, columns, fig, notes)
    exp.print_table(summary, columns, f"Downsampling study ({what}, stems swapped)")
    return exp


def plot(exp, summary):
    plt = C.plt
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    names = [s["variant"] for s in summary]
    x = np.arange(len(names))
    ticks = [f"{LABELS[n]}\nstem stride {s['stem_stride']}\npaper VOC07 {PAPER_MAP[n]}"
             for n, s in zip(names, summary)]
    for ax, key, title in ((axes[0], "AP", "AP"), (axes[1], "APs", "APs (small objects)"),
                           (axes[2], "sec_per_iter", "seconds per training iteration (wall)")):
        vals = [np.nan if s[key] is None else s[key] for s in summary]
        errs = [0 if s.get(key + "_std") is None else s[key + "_std"] for s in summary]
        bars = ax.bar(x, vals, yerr=errs if any(errs) else None, capsize=4,
                      color=["tab:gray", "tab:olive", "tab:cyan", "tab:blue"][:len(x)])
        for b, v in zip(bars, vals):
            ax.annotate("n/a" if not np.isfinite(v) else f"{v:.2f}" if key == "sec_per_iter"
                        else f"{v:.1f}", (b.get_x() + b.get_width() / 2,
                                          0 if not np.isfinite(v) else v),
                        ha="center", va="bottom", fontsize=9, xytext=(0, 3),
                        textcoords="offset points")
        for r in exp.runs:  # individual runs as dots
            v = r[key] if key != "APs" else r["APs"]
            if v is not None and r["variant"] in names:
                ax.plot(names.index(r["variant"]), v, "k.", ms=5)
        ax.set_xticks(x)
        ax.set_xticklabels(ticks, fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"ScratchDet downsampling study, {exp.settings['detector_label']} ({exp.mode}, "
                 f"{exp.iterations} iterations, eval on {exp.eval_images} images)")
    fig.tight_layout()
    return C.save_figure(fig, exp)


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
