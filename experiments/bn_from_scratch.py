"""ScratchDet's BatchNorm question at CPU scale: does a detector trained from scratch
need BN in the backbone AND in the head, and does BN let it take a large learning rate?

A demo detector, random init, is trained on the embedded shapes data in three settings,
each at two learning rates. ``--detector`` chooses it:

- ``retinanet`` (default): ``configs/shapes/scratchdet_root_resnet18_fpn_demo.py``, a
  narrow Root-ResNet-18-FPN RetinaNet with focal loss;
- ``ssd``: ``configs/shapes/scratchdet300_root_resnet18_demo.py``, the paper's detector
  (ScratchDet300's design: Root-ResNet-18 with SSD extra stages, SSD head, MultiBox
  loss) at the same widths, data and schedule; recorded as ``bn_from_scratch_ssd``.

The settings:

- ``bn_all``: BN in the backbone, the FPN (SSD: the extra stages) and the head (the
  config as it is);
- ``bn_backbone``: BN in the backbone only (RetinaNet: ``model.backbone.norm=""`` for
  the FPN and ``model.head.norm=""``; SSD: ``model.head.norm=""``, the extra stages are
  the SSD backbone's and keep BN, as in the paper's VGG16 SSD ablation);
- ``no_bn``: no BN anywhere (also ``model.backbone.bottom_up.norm=""`` and, SSD,
  ``model.backbone.norm=""``; convs get biases).

Recorded per run: the loss curves, the total L2 norm of the whole model's gradient at
every iteration (after ``backward()``, before the step), how much it varies (std/mean
and max/min over windows of about 1/20 of the run, mean |log g_t - log g_{t-1}|, and
the relative change of the gradient vector between consecutive iterations
``||g_t - g_{t-1}|| / ||g_{t-1}||``, a cheap proxy of the paper's gradient-stability
plots; consecutive iterations see different mini-batches), and the final AP with
Detectron2's COCOEvaluator on ``scratchdet_shapes_val``. A run whose loss becomes
non-finite is recorded as diverged (AP null, with the iteration).

Sizes:

- full (default): learning rates 0.03 (the config's) and 0.1, 400 iterations per run
  at batch 8 (the config's cosine schedule with warm-up over the first 1/12), 6 runs,
  evaluation on all 200 validation images. About 20-35 min on an idle 2-core CPU: a
  step of batch 8 takes about 0.7-0.8 s with two threads (1.4 s measured on one);
  runs that diverge stop there (in a 60-iteration probe at lr 0.1, "bn_backbone" and
  "no_bn" diverged before iteration 20, "bn_all" did not).
- ``--quick``: learning rate 0.03 only, 20 iterations at batch 4, evaluation on the
  first 30 validation images; under a minute. A smoke test of the pipeline, not a
  result.

Writes ``results.json`` and ``bn_from_scratch.png`` (``bn_from_scratch_ssd.png``: loss,
gradient norm and gradient change per iteration, one column per learning rate) into the
output directory (default ``output/experiments/bn_from_scratch[_ssd]/``).
"""
import sys

import numpy as np

from . import common as C

NAME = "bn_from_scratch"
_NO_BN = ["model.backbone.norm=", "model.head.norm=", "model.backbone.bottom_up.norm="]
VARIANTS = {  # per detector: variant -> (label, overrides)
    "retinanet": {
        "bn_all": ("BN in backbone + FPN + head", []),
        "bn_backbone": ("BN in backbone only", ["model.backbone.norm=", "model.head.norm="]),
        "no_bn": ("no BN", _NO_BN),
    },
    "ssd": {
        "bn_all": ("BN in backbone + extra stages + head", []),
        "bn_backbone": ("BN in backbone + extra stages only", ["model.head.norm="]),
        "no_bn": ("no BN", _NO_BN),
    },
}
COLORS = {"bn_all": "tab:blue", "bn_backbone": "tab:orange", "no_bn": "tab:red"}
FULL = dict(iterations=400, lrs=[0.03, 0.1], batch_size=8, eval_images=0)
QUICK = dict(iterations=20, lrs=[0.03], batch_size=4, eval_images=30)
SEED = 0


def main(argv=None):
    def add_arguments(parser):
        parser.add_argument("--lrs", type=float, nargs="+", default=None,
                            help="learning rates (default: full 0.03 0.1, quick 0.03)")
        parser.add_argument("--seed", type=int, default=SEED)

    exp, args, size = C.begin(NAME, __doc__, argv, FULL, QUICK, add_arguments, detectors=True)
    lrs = args.lrs or size["lrs"]
    config, what = C.DETECTORS[args.detector]
    variants = VARIANTS[args.detector]
    exp.settings.update(learning_rates=lrs, seeds=[args.seed],
                        variants={k: dict(label=v[0], overrides=v[1]) for k, v in variants.items()})
    for lr in lrs:
        for variant, (label, overrides) in variants.items():
            key = f"{variant}_lr{lr:g}"
            cfg = C.prepare_config(
                config, exp, lr=lr, output_dir=exp.run_dir(key),
                overrides=list(overrides)
                + [f"dataloader.train.total_batch_size={size['batch_size']}"])
            C.train_and_evaluate(exp, cfg, variant=variant, label=label, seed=args.seed,
                                 lr=lr, grad_norm=True, grad_change=True)

    columns = ["variant", "lr", "AP", "APs", "final_loss", "grad_norm_median",
               "grad_norm_window_cv", "grad_change_median", "sec_per_iter", "status"]
    summary = []
    for r in exp.runs:
        g = r["grad_norm_stats"]
        summary.append(dict(
            variant=r["variant"], label=r["label"], lr=r["lr"], AP=r["AP"], APs=r["APs"],
            final_loss=r["final_loss"], grad_norm_median=g["median"],
            grad_norm_window_cv=g["window_cv_mean"],
            grad_norm_mean_abs_log_change=g["mean_abs_log_change"],
            grad_change_median=g["grad_change_rel_median"],
            sec_per_iter=r["sec_per_iter"],
            status=(f"diverged at it {r['diverged_at']}" if r["diverged"]
                    else f"{r['iterations']} its")))
    fig = plot(exp, lrs)
    notes = [
        f"detector: {what} ({C.rel(config)}).",
        "AP in percent (COCOEvaluator bbox AP on the evaluation images at the config's "
        "fixed score threshold: 0.05 for the focal RetinaNet, 0.01 for the SSD).",
        "grad_norm: total L2 norm of all parameter gradients after backward(), before "
        "the optimizer step (weight decay not included).",
        "grad_norm_window_cv: mean over windows of std/mean of grad_norm; "
        "grad_change_median: median of ||g_t - g_{t-1}|| / ||g_{t-1}|| (consecutive "
        "iterations, different mini-batches).",
        "sec_per_iter is wall time on a possibly shared machine.",
    ]
    exp.write(summary, columns, fig, notes)
    exp.print_table(summary, columns, f"BN from scratch ({what})")
    return exp


def plot(exp, lrs):
    plt = C.plt
    fig, axes = plt.subplots(3, len(lrs), figsize=(5.5 * len(lrs), 10), squeeze=False)
    w = max(1, exp.iterations // 30)
    for j, lr in enumerate(lrs):
        for r in exp.runs:
            if r["lr"] != lr:
                continue
            c = r["curves"]
            it = np.array(c["iteration"])
            col = COLORS.get(r["variant"])
            lab = r["label"] + (f" (diverged @ {r['diverged_at']})" if r["diverged"] else
                                f", AP {r['AP']:.1f}" if r["AP"] is not None else ", AP n/a")
            for row, key, sm in ((0, "total_loss", w), (1, "grad_norm", 1),
                                 (2, "grad_change_rel", w)):
                ys = C.smooth(c.get(key, []), sm)
                if len(ys):
                    axes[row][j].plot(it[:len(ys)], ys, color=col, label=lab, lw=1.2)
                    if r["diverged"] and np.isfinite(ys).any():
                        k = int(np.flatnonzero(np.isfinite(ys))[-1])
                        axes[row][j].plot(it[k], ys[k], "x", color=col, ms=9, mew=2)
        axes[0][j].set_title(f"lr {lr:g}")
        axes[0][j].set_ylabel(f"total loss (moving avg {w})")
        axes[1][j].set_ylabel("gradient L2 norm (whole model)")
        axes[2][j].set_ylabel(f"||g_t - g_(t-1)|| / ||g_(t-1)|| (avg {w})")
        axes[2][j].set_xlabel("iteration")
        for row in range(3):
            axes[row][j].set_yscale("log")
            axes[row][j].grid(alpha=0.3)
        axes[0][j].legend(fontsize=8)
    fig.suptitle(f"ScratchDet: BN and training from scratch, {exp.settings['detector_label']} "
                 f"({exp.mode}, "
                 f"{exp.iterations} iterations, eval on {exp.eval_images} images)")
    return C.save_figure(fig, exp)


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
