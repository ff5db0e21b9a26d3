"""Inference latency: DefaultPredictor, post-processing at the adaptive vs the fixed 0.05
threshold, Root-ResNet vs ResNet detectors, and deployment (BatchNorm folded, TorchScript,
ONNX Runtime) vs eager.

    python -m benchmarks.inference [--repeats 3] [--images 20] [--train-iters 160]
                                   [--weights CKPT.pth] [--device cpu|cuda]
                                   [--sections predictor,postprocess,backbones,export]
                                   [--output FILE.json] [--quick]

``--sections`` runs some of the four sections below (default: all); the brief training
runs only for ``predictor`` and ``postprocess``.

The model: configs/coco_mini/sampling_free_root_resnet18_fpn_coco_mini.py (narrow
ScratchDet Root-ResNet-18-FPN, Sampling-Free RetinaNet, 80 classes, test short side 256).
A freshly initialised Sampling-Free model scores about the prior everywhere, so nothing
passes either threshold and the post-processing would be idle. Unless ``--weights`` gives a
checkpoint (written by train_net.py from that config, or any with the same parameters),
the benchmark therefore trains the LazyConfig model briefly first: prior counted on
coco_mini's train split (cached like train_net.py's), then ``do_train`` (train_net.py's
loop, without checkpoints, evaluation or writers) on the config's data loader (sampler
and augmentations seeded with ``--seed``), optimizer and learning rate (linear warm-up
over the first 20 iterations, then constant) until its scores on the
benchmark's images are spread like a detector's, checked every 20 iterations from the
40th: the median image's top class score is at least ``--spread-score`` (0.1) and the
median image has at most ``--max-candidates`` (500) (anchor, class) scores above 0.05.
(The first few dozen iterations score nearly every anchor high, hundreds of thousands
of scores above 0.05 per image; then the scores settle, and whether a given iteration
count lands on a useful model depends on the data order, hence the check.) At most
``--train-iters`` (160) iterations. The model is saved as a checkpoint (the prior and
the adaptive threshold are buffers, so the checkpoint carries them). The JSON records
the checks, the checkpoint used and how many candidates pass each threshold.

Comparisons (A/B, alternating order over repeats):

- ``predictor_adaptive_vs_fixed``: seconds per image of Detectron2's ``DefaultPredictor``
  built by ``scratchdet.engine.build_predictor`` from the YAML twin
  (configs/coco_mini/sampling_free_root_resnet18_fpn_coco_mini.yaml) and the checkpoint,
  with the checkpoint's adaptive threshold (A) and with the fixed 0.05 (B, through
  ``scratchdet.evaluation.score_floor``), over ``--images`` coco_mini val images.
- ``postprocess_adaptive_vs_fixed``: seconds per image of the post-processing alone
  (``model.inference_single_image``: score threshold, top-k candidates per level, box
  decoding, batched NMS, detection cap) on head outputs computed once per image (sigmoid
  applied once, as ``forward_inference`` does) and reused: adaptive (A) vs 0.05 (B).
- ``root_resnet34_vs_resnet34``: seconds per image of the two detectors of
  ``python -m benchmarks.train_step``'s pair of that name (focal RetinaNet-FPN, coco_mini
  widths, random weights, eval mode, the config's test resize), called on preprocessed
  images (network + post-processing; with random weights almost nothing passes 0.05).
- section ``export`` (:mod:`benchmarks.export_latency`, always on the CPU):
  ``<model>_<variant>_vs_eager`` for the demo detector (``demo``) and ScratchDet300 at the
  demo's widths (``scratchdet300``), random weights and BatchNorm statistics, the
  ``--images`` resized to 160 x 160: seconds per image of the model with its BatchNorms
  folded (``folded``), traced TorchScript (``torchscript``) and ONNX Runtime
  (``onnxruntime``, target 0.8) against the eager model, each comparison with a check
  that the variant's detections equal eager's (``detections``, and a line under the
  table).
"""
import glob
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Dict, List

from . import common

NAME = "inference"
LAZY = "coco_mini/sampling_free_root_resnet18_fpn_coco_mini.py"
YAML = os.path.join(common.CONFIGS, "coco_mini", "sampling_free_root_resnet18_fpn_coco_mini.yaml")
FIXED = 0.05
SECTIONS = ("predictor", "postprocess", "backbones", "export")
CHECK_EVERY = 20  # iterations between the checks of the brief training
MIN_ITERS = 40  # the first check that may stop it


def val_images(n: int) -> List[str]:
    from scratchdet.data import coco_mini_root

    files = sorted(glob.glob(os.path.join(coco_mini_root(), "val2017", "*.jpg")))
    if len(files) < n:
        raise SystemExit(f"coco_mini val2017 has {len(files)} images, fewer than {n}")
    return files[:n]


def score_spread(model, aug, imgs) -> Dict[str, List]:
    """Per image: the highest class score and the number of (anchor, class) scores above
    the fixed threshold (eval mode, the head's raw outputs)."""
    was = model.training
    model.eval()
    try:
        outs = [head_outputs(model, aug, im)[1] for im in imgs]
    finally:
        model.train(was)
    return {"top": [float(max(s.max() for s in o)) for o in outs],
            "above_fixed": [int(sum(int((s > FIXED).sum()) for s in o)) for o in outs]}


def warmup_then_constant(warmup: int, max_iter: int):
    """The brief training's learning-rate multiplier, as a ``cfg.lr_multiplier`` of
    ``max_iter`` iterations: at iteration ``it`` (from 0) ``min(1, (it + 1) / warmup)``,
    a linear warm-up that reaches the base rate at iteration ``warmup - 1``, then
    constant (Detectron2's ``WarmupMultiStepLR`` without steps)."""
    from detectron2.config import LazyCall as L
    from detectron2.solver import WarmupParamScheduler
    from fvcore.common.param_scheduler import MultiStepParamScheduler

    constant = L(MultiStepParamScheduler)(values=[1.0], milestones=[], num_updates=max_iter)
    if warmup <= 1:
        return constant
    # Detectron2's linear warm-up runs from warmup_factor at where 0 to 1 at warmup_length
    return L(WarmupParamScheduler)(scheduler=constant, warmup_factor=1.0 / warmup,
                                   warmup_length=(warmup - 1) / max_iter,
                                   warmup_method="linear")


def train_briefly(args, out_dir: str, imgs) -> Dict:
    """The LazyConfig model, prior set, trained with ``do_train`` until its scores on
    ``imgs`` are spread (checked every ``CHECK_EVERY`` iterations from ``MIN_ITERS`` on:
    median top score >= ``args.spread_score`` and median number of scores above 0.05 <=
    ``args.max_candidates``) or for ``args.train_iters`` iterations; saved in
    ``out_dir``."""
    import torch
    from detectron2.config import instantiate
    from detectron2.engine import hooks
    from detectron2.utils.env import seed_all_rng

    from scratchdet.engine.checkpoint import AtomicCheckpointer
    from scratchdet.engine.lazy_train import do_train
    from scratchdet.sampling_free import initialize_priors

    cfg = common.load_config(LAZY, [f"train.device={args.device}"])
    torch.manual_seed(args.seed)
    model = instantiate(cfg.model)
    t0 = time.perf_counter()
    counts = initialize_priors(cfg, model, progress=False)  # on the CPU (see train_step)
    prior_seconds = time.perf_counter() - t0
    model.to(args.device)
    base_lr = float(cfg.optimizer.lr)
    warmup = max(1, min(20, args.train_iters // 5))
    cfg.train.max_iter = args.train_iters
    cfg.train.output_dir = out_dir
    cfg.lr_multiplier = warmup_then_constant(warmup, args.train_iters)
    test_aug = instantiate(cfg.dataloader.test.mapper.augmentations)[0]
    losses, checks, reached = [], [], [None]  # reached: whether a check stopped training

    def spread(trainer) -> bool:
        """After each iteration: record its loss; every CHECK_EVERY iterations check the
        scores, True (stop) once they are spread."""
        losses.append(trainer.storage.latest()["total_loss"][0])
        done = trainer.iter + 1
        if done % CHECK_EVERY:
            return False
        sp = score_spread(model, test_aug, imgs)
        med = statistics.median(sp["top"])
        cand = statistics.median(sp["above_fixed"])
        checks.append({"iteration": done, "loss": losses[-1], "median_top_score": med,
                       "median_scores_above_fixed": cand,
                       "images_with_a_score_above_fixed": sum(t > FIXED for t in sp["top"])})
        print(f"  training {done}/{args.train_iters}: loss {losses[-1]:.3f}, median "
              f"top score {med:.3g}, median scores above {FIXED}: {cand:.0f}", flush=True)
        if done >= MIN_ITERS and med >= args.spread_score and cand <= args.max_candidates:
            reached[0] = True
        return bool(reached[0])

    t0 = time.perf_counter()
    # the config's loader with a seeded sampler, and all generators seeded right before
    # the first iteration (the mapper's resize/flip draws run in this process), so the
    # same --seed gives the same checkpoint
    do_train(cfg, model, sampler_seed=args.seed, stop_when=spread, outputs=False,
             extra_hooks=[hooks.CallbackHook(before_train=lambda _: seed_all_rng(args.seed))])
    train_seconds = time.perf_counter() - t0
    if reached[0] is None and checks:
        reached[0] = False
        print(f"WARNING: after {args.train_iters} iterations the scores are not spread as "
              f"asked (last check: {checks[-1]}); the post-processing comparison runs on this "
              "model anyway", file=sys.stderr)
    model.eval()
    os.makedirs(out_dir, exist_ok=True)
    AtomicCheckpointer(model, save_dir=out_dir).save("model_benchmark")
    return {"weights": os.path.join(out_dir, "model_benchmark.pth"), "trained_here": True,
            "train_iters_max": args.train_iters, "train_iters": len(losses),
            "spread_score": args.spread_score, "max_candidates": args.max_candidates,
            "spread_reached": reached[0], "checks": checks,
            "base_lr": base_lr, "warmup_iters": warmup,
            "batch_size": int(cfg.dataloader.train.total_batch_size),
            "prior": {k: v.prior for k, v in counts.items()},
            "prior_seconds": prior_seconds, "train_seconds": train_seconds,
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None}


def head_outputs(model, aug, image) -> tuple:
    """What ``forward_inference`` hands to ``inference_single_image`` for one image."""
    import torch

    with torch.no_grad():
        h, w = image.shape[:2]
        x = aug.get_transform(image).apply_image(image)
        inputs = {"image": torch.as_tensor(x.astype("float32").transpose(2, 0, 1)),
                  "height": h, "width": w}
        images = model.preprocess_image([inputs])
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        logits, deltas = model._transpose_dense_predictions(model.head(features),
                                                            [model.num_classes, 4])
        anchors = model.anchor_generator(features)
        return (anchors, [x[0].sigmoid() for x in logits], [x[0] for x in deltas],
                images.image_sizes[0])


def candidates(cached, thresholds) -> int:
    return int(sum(int((s > thresholds.to(s.device)).sum()) for s in cached[1]))


def predictor_comparisons(args, imgs, weights, sections) -> tuple:
    """Sections ``predictor`` and ``postprocess``: the Sampling-Free coco_mini model of
    ``weights`` at its adaptive threshold vs the fixed 0.05. Returns (comparisons, the
    adaptive thresholds)."""
    import torch

    from scratchdet.engine.predictor import build_predictor
    from scratchdet.evaluation import inference_thresholds, score_floor

    comparisons = []
    pred = build_predictor(YAML, weights["weights"], device=args.device)
    model = pred.model
    k = model.num_classes
    adaptive = inference_thresholds(model)
    fixed = torch.full((k,), FIXED)
    if not model.prior_state.is_set:
        raise SystemExit(f"{weights['weights']}: the checkpoint carries no prior, so there is "
                         "no adaptive threshold to compare")
    label_a = f"adaptive threshold ({float(adaptive.max()):.3g}, from the checkpoint's prior)"
    label_b = f"fixed threshold {FIXED}"

    # 1. DefaultPredictor, adaptive vs fixed ------------------------------------------------
    if "predictor" in sections:
        for img in imgs[:2]:
            pred(img)  # warm-up
        a, b, raw_a, raw_b = [], [], [], []
        dets = {"adaptive": [], "fixed": []}
        for r in range(args.repeats):
            for key in (("a", "b") if r % 2 == 0 else ("b", "a")):
                common.collect()
                times = []
                if key == "a":
                    for img in imgs:
                        times.append(common.timed(lambda: pred(img), args.device))
                    a.append(statistics.fmean(times))
                    raw_a.append(times)
                else:
                    with score_floor(model, fixed):
                        for img in imgs:
                            times.append(common.timed(lambda: pred(img), args.device))
                    b.append(statistics.fmean(times))
                    raw_b.append(times)
            print(f"  predictor repeat {r}: adaptive {a[-1] * 1000:.1f} ms, 0.05 "
                  f"{b[-1] * 1000:.1f} ms", flush=True)
        for img in imgs:
            dets["adaptive"].append(len(pred(img)["instances"]))
            with score_floor(model, fixed):
                dets["fixed"].append(len(pred(img)["instances"]))
        comparisons.append(common.comparison(
            "predictor_adaptive_vs_fixed", "seconds_per_image", "s",
            "DefaultPredictor (YAML twin), " + label_a,
            "DefaultPredictor (YAML twin), " + label_b,
            a, b, raw={"a_seconds_per_image": raw_a, "b_seconds_per_image": raw_b,
                       "detections_per_image": dets}))

    # 2. post-processing alone, adaptive vs fixed ------------------------------------------
    if "postprocess" in sections:
        cached = [head_outputs(model, pred.aug, img) for img in imgs]
        cand = {"adaptive": [candidates(c, adaptive) for c in cached],
                "fixed": [candidates(c, fixed) for c in cached]}
        top_scores = [float(max(s.max() for s in c[1])) for c in cached]

        def post_all():
            with torch.no_grad():
                for c in cached:
                    model.inference_single_image(*c)

        for _ in range(2):  # warm-up
            post_all()
        a, b = [], []
        for r in range(args.repeats):
            for key in (("a", "b") if r % 2 == 0 else ("b", "a")):
                common.collect()
                if key == "a":
                    a.append(common.timed(post_all, args.device) / len(cached))
                else:
                    with score_floor(model, fixed):
                        b.append(common.timed(post_all, args.device) / len(cached))
        comparisons.append(common.comparison(
            "postprocess_adaptive_vs_fixed", "seconds_per_image", "s",
            "inference_single_image, " + label_a, "inference_single_image, " + label_b, a, b,
            raw={"candidates_above_threshold": cand, "top_score_per_image": top_scores},
            note="decode + threshold + top-k + NMS on cached head outputs"))
        print(f"  post-processing: adaptive {statistics.median(a) * 1000:.2f} ms, 0.05 "
              f"{statistics.median(b) * 1000:.2f} ms per image", flush=True)
    return comparisons, adaptive


def backbone_comparison(args, imgs) -> Dict:
    """Section ``backbones``: the Root-ResNet-34 vs ResNet-34 detectors."""
    import torch
    from detectron2.config import instantiate

    from .train_step import PAIRS

    pair = PAIRS["root_resnet34_vs_resnet34"]
    nets, inputs = {}, None
    for key, variant in (("a", pair.a), ("b", pair.b)):
        cfg = variant.build_cfg(args)
        torch.manual_seed(args.seed)
        nets[key] = instantiate(cfg.model).to(args.device).eval()
        if inputs is None:
            augs = instantiate(cfg.dataloader.test.mapper.augmentations)
            import detectron2.data.transforms as T

            aug = T.AugmentationList(list(augs))
            inputs = []
            for img in imgs:
                ai = T.AugInput(img.copy())
                aug(ai)
                inputs.append({"image": torch.as_tensor(
                    ai.image.astype("float32").transpose(2, 0, 1)),
                    "height": img.shape[0], "width": img.shape[1]})

    def run_net(net, x):
        with torch.no_grad():
            net([x])

    for key in ("a", "b"):
        for x in inputs[:2]:
            run_net(nets[key], x)  # warm-up
    per = {"a": [], "b": [], "raw_a": [], "raw_b": []}
    for r in range(args.repeats):
        for key in (("a", "b") if r % 2 == 0 else ("b", "a")):
            common.collect()
            times = [common.timed(lambda: run_net(nets[key], x), args.device) for x in inputs]
            per[key].append(statistics.fmean(times))
            per[f"raw_{key}"].append(times)
        print(f"  backbones repeat {r}: Root-ResNet-34 {per['a'][-1] * 1000:.1f} ms, ResNet-34 "
              f"{per['b'][-1] * 1000:.1f} ms", flush=True)
    return common.comparison(
        "root_resnet34_vs_resnet34", "seconds_per_image", "s", pair.a.label, pair.b.label,
        per["a"], per["b"], raw={"a_seconds_per_image": per["raw_a"],
                                 "b_seconds_per_image": per["raw_b"]},
        note=pair.note)


def main(argv=None):
    p = common.make_parser(NAME, __doc__, default_repeats=3)
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help="comma-separated sections to run, of " + ", ".join(SECTIONS)
                   + " (default: all; the first two share the briefly trained model)")
    p.add_argument("--images", type=int, default=None, help="coco_mini val images "
                   "(default 20; 2 with --quick)")
    p.add_argument("--weights", default=None, help="checkpoint of the coco_mini Sampling-Free "
                   "config to use instead of training one")
    p.add_argument("--train-iters", type=int, default=None,
                   help="most iterations of the brief training (default 160; 2 with --quick)")
    p.add_argument("--spread-score", type=float, default=0.1,
                   help="brief training: the median image's top score must reach this "
                   "(default 0.1)")
    p.add_argument("--max-candidates", type=int, default=500,
                   help="brief training: ... and the median image may have at most this many "
                   "scores above 0.05 (default 500; early training scores nearly every anchor "
                   "high)")
    p.add_argument("--save-weights", default=None, help="keep the trained checkpoint here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backbone-config",
                   default="coco_mini/scratchdet_root_resnet18_fpn_coco_mini.py",
                   help="config of the root_resnet34_vs_resnet34 pair (depth set to 34)")
    p.add_argument("--export-candidates", type=int, default=500,
                   help="section export: the random demo RetinaNet's score threshold lets "
                   "this many (anchor, class) scores of the first image pass (default 500)")
    args = common.finish_args(p.parse_args(argv))
    common.quiet_logs()
    sections = common.choose(args.sections, SECTIONS, "section")
    if args.images is None:
        args.images = 2 if args.quick else 20
    if args.train_iters is None:
        args.train_iters = 2 if args.quick else 160
    from detectron2.data import detection_utils as utils

    started = time.time()
    env = common.environment(args.device)
    print(f"inference on {env['device']['name']}: {args.images} images, {args.repeats} repeats, "
          f"sections {', '.join(sections)}", flush=True)
    tmp = tempfile.TemporaryDirectory(prefix="scratchdet_bench_")
    files = val_images(args.images)
    imgs = [utils.read_image(f, format="BGR") for f in files]
    comparisons, weights, adaptive, export = [], None, None, None
    if {"predictor", "postprocess"} & set(sections):
        if args.weights:
            weights = {"weights": os.path.abspath(args.weights), "trained_here": False}
        else:
            weights = train_briefly(args, tmp.name, imgs)
            if args.save_weights:
                dst = os.path.abspath(args.save_weights)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.move(weights["weights"], dst)
                weights["weights"] = dst
        comps, adaptive = predictor_comparisons(args, imgs, weights, sections)
        comparisons += comps
        common.collect()  # free the predictor before building the next models
    if "backbones" in sections:
        comparisons.append(backbone_comparison(args, imgs))
    if "export" in sections:
        from .export_latency import export_comparisons

        comps, export = export_comparisons(args, imgs, tmp.name)
        comparisons += comps

    settings = {"sections": sections,
                "images": [os.path.basename(f) for f in files], "num_images": len(files),
                "config": "configs/" + LAZY, "yaml": os.path.relpath(YAML, common.REPO),
                "fixed_threshold": FIXED,
                "adaptive_thresholds": None if adaptive is None else sorted(set(adaptive.tolist())),
                "train_iters_max": args.train_iters, "spread_score": args.spread_score,
                "max_candidates": args.max_candidates,
                "seed": args.seed,
                "backbone_config": args.backbone_config, "weights": weights, "export": export}
    tmp.cleanup()
    return common.finish(NAME, args, settings, comparisons, started, env,
                         "inference: seconds per image, A/B")


if __name__ == "__main__":
    sys.exit(main())
