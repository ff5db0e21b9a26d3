"""Seconds per training iteration and peak memory, A/B, on the same inputs.

    python -m benchmarks.train_step [--repeats 3] [--steps 2] [--device cpu|cuda]
                                    [--threads 1] [--pairs NAME,...] [--output FILE.json]
                                    [--quick]

Pairs (A / B, target on the median ratio of the step time):

- ``retinanet_coco_mini``: Sampling-Free RetinaNet vs Detectron2's focal-loss RetinaNet,
  same narrow ScratchDet Root-ResNet-18-FPN (configs/coco_mini/sampling_free_... vs
  configs/coco_mini/scratchdet_...). Target <= 1.00.
- ``retinanet_R50_FPN``: configs/COCO/sampling_free_retinanet_R_50_FPN_1x.py vs Detectron2's
  model zoo COCO-Detection/retinanet_R_50_FPN_1x.py. Target <= 1.00.
- ``faster_rcnn_R50_FPN``: configs/COCO/sampling_free_faster_rcnn_R_50_FPN_1x.py vs the same
  model without the sampling_free_rcnn() transform (Detectron2's common/models/mask_rcnn_fpn.py
  without its mask head, res2 and stem frozen as in the SF config). Target <= 1.15.
- ``cascade_rcnn_R50_FPN``: configs/COCO/sampling_free_cascade_rcnn_R_50_FPN_1x.py vs the
  same model without the sampling_free_cascade_rcnn() transform (Detectron2's
  common/models/cascade_rcnn.py without its mask head). Target <= 1.15.
- ``fcos_R50_FPN``: configs/COCO/sampling_free_fcos_R_50_FPN_1x.py vs Detectron2's model zoo
  COCO-Detection/fcos_R_50_FPN_1x.py. Target <= 1.00.
- ``mask_rcnn_R50_FPN``: configs/COCO/sampling_free_mask_rcnn_R_50_FPN_1x.py vs Detectron2's
  model zoo COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py. Target <= 1.15.
- ``root_resnet34_vs_resnet34``: the same RetinaNet-FPN (focal loss, coco_mini config's
  widths: stem 32, stages 32..256, FPN and head 64) on a Root-ResNet-34 with its default
  root (3x 3x3/1 convs + 2x2/2 max-pool: stem stride 2, FPN p2..p6) vs a ResNet-34 with the
  stock stem (7x7/2 conv + 3x3/2 max-pool, DOWNSAMPLING_STUDY["resnet18"]: stem stride 4,
  so FPN p3..p7, P6/P7 from p5 and anchor strides 8..128; anchor sizes unchanged). No
  target: the root costs more, which is the paper's trade-off.

What is measured. Every variant is built from its config with random initialisation
(``torch.manual_seed(--seed)`` before each build, so both variants of a pair start from
the same random stream; nothing is downloaded) and trained on one fixed batch: the first
``--batch-size`` coco_mini training images through the config's own train mapper, with
its augmentations replaced by one deterministic resize (short side ``--short-side``, long
side at most ``--max-size``; no flip). Sampling-Free heads get their prior counted on that
batch (``initialize_priors(..., dataset_dicts=batch)``; the value does not change the cost).
The R-50 models keep Detectron2's FrozenBN; with no ImageNet weights, each FrozenBN's
statistics are first set to those of its input on the batch (``common.calibrate_frozen_bn``),
else the random network's activations blow up and the RPN keeps only a few proposals, and
the Sampling-Free ROI heads would have nothing to do (the JSON keeps the logged proposal
counts under ``variants.<pair>.<a|b>.last_step_scalars``).
One iteration is what Detectron2's SimpleTrainer.run_step does: forward with losses,
sum, zero_grad, backward, SGD step (the config's optimizer), then the loss read back as a
float (SimpleTrainer's metrics do the same; on CUDA it also synchronises). The SGD step
uses ``--lr`` (default 0): the same arithmetic as any learning rate (momentum, weight
decay, update), but the network stays as built, so A and B time the same state in every
repeat and the from-scratch R-50 models (FrozenBN, no ImageNet weights) cannot diverge
into NaN, which Detectron2's RPN refuses in training.

Alternation: in repeat r the pair runs A then B (even r) or B then A (odd r); each
variant runs ``--warmup`` untimed steps right before its ``--steps`` timed steps. The
per-repeat value is the mean of the timed steps; the ratio A/B is taken per repeat and
summarised by its median, min and max.

Peak memory. CUDA: ``max_memory_allocated() - memory_allocated()`` over the timed steps
after ``reset_peak_memory_stats()`` (activations, gradients and temporaries of a step).
CPU: each variant runs in its own subprocess (``--memory-repeats`` times, alternating the
order), which resets the kernel's RSS high-water mark (/proc/self/clear_refs) after
building, runs ``--memory-steps`` steps and reports the peak (VmHWM; ru_maxrss, which an
exited thread can leave higher, is kept in the JSON too) minus the RSS before the first
step: activations of forward + backward, plus gradients and SGD momentum.

Threads: on CPU the default is ``--threads 1`` (see ``--help``): on a shared 2-core
machine, two-thread ops wait for descheduled threads and the ratios lose their meaning;
``--threads 0`` keeps torch's default (one per CPU, as train_net.py).
"""
import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from . import common

NAME = "train_step"
MB = 1024.0 ** 2


# -- the variants -------------------------------------------------------------------------
def _ours(path: str, coco_mini_data: bool = True) -> Callable:
    """Builds ``configs/<path>`` (with the coco_mini dataset overrides for a COCO config)."""
    return lambda args: common.load_config(
        path, common.coco_mini_overrides() if coco_mini_data else ())


def _zoo(path: str) -> Callable:
    """Builds Detectron2's model zoo config ``path`` on the coco_mini data."""
    return lambda args: common.load_zoo_config(path, common.coco_mini_overrides())


_sf_retinanet_coco_mini = _ours("coco_mini/sampling_free_root_resnet18_fpn_coco_mini.py", False)
_focal_retinanet_coco_mini = _ours("coco_mini/scratchdet_root_resnet18_fpn_coco_mini.py", False)
_sf_retinanet_r50 = _ours("COCO/sampling_free_retinanet_R_50_FPN_1x.py")
_d2_retinanet_r50 = _zoo("COCO-Detection/retinanet_R_50_FPN_1x.py")
_sf_faster_rcnn_r50 = _ours("COCO/sampling_free_faster_rcnn_R_50_FPN_1x.py")
_sf_cascade_rcnn_r50 = _ours("COCO/sampling_free_cascade_rcnn_R_50_FPN_1x.py")
_sf_fcos_r50 = _ours("COCO/sampling_free_fcos_R_50_FPN_1x.py")
_d2_fcos_r50 = _zoo("COCO-Detection/fcos_R_50_FPN_1x.py")
_sf_mask_rcnn_r50 = _ours("COCO/sampling_free_mask_rcnn_R_50_FPN_1x.py")
_d2_mask_rcnn_r50 = _zoo("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py")


def _d2_faster_rcnn_r50(args):
    """The SF Faster R-CNN config with Detectron2's own model: common/models/mask_rcnn_fpn.py
    without the mask head, res2 and stem frozen (what the SF config starts from)."""
    from detectron2.model_zoo import get_config

    cfg = _sf_faster_rcnn_r50(args)
    model = get_config("common/models/mask_rcnn_fpn.py").model
    model.roi_heads.mask_in_features = None
    model.roi_heads.mask_pooler = None
    model.roi_heads.mask_head = None
    model.backbone.bottom_up.freeze_at = 2
    cfg.model = model
    return cfg


def _d2_cascade_rcnn_r50(args):
    """The SF Cascade R-CNN config with Detectron2's own cascade model
    (common/models/cascade_rcnn.py without its mask head, as the SF config builds it)."""
    from detectron2.model_zoo import get_config

    cfg = _sf_cascade_rcnn_r50(args)
    model = get_config("common/models/cascade_rcnn.py").model
    for k in ("mask_in_features", "mask_pooler", "mask_head"):
        model.roi_heads[k] = None
    model.backbone.bottom_up.freeze_at = 2
    model.proposal_generator.post_nms_topk = cfg.model.proposal_generator.post_nms_topk
    cfg.model = model
    return cfg


def _root_resnet34(args):
    cfg = common.load_config(args.backbone_config)
    cfg.model.backbone.bottom_up.depth = 34
    return cfg


def stock_resnet_stem(model_cfg) -> None:
    """Give a ScratchDet RetinaNet-FPN config the stock ResNet stem (7x7/2 + 3x3/2 pool)
    and shift the FPN levels and anchor strides by one octave to match (stem stride 4
    instead of the root's 2): p2..p6 -> p3..p7, P6/P7 from p5, strides x2."""
    from scratchdet.backbone import DOWNSAMPLING_STUDY

    bb = model_cfg.backbone.bottom_up
    for k, v in DOWNSAMPLING_STUDY["resnet18"].items():
        setattr(bb, k, v)

    def shift(level: str) -> str:
        return f"p{int(level[1:]) + 1}"

    model_cfg.backbone.top_block.in_feature = shift(model_cfg.backbone.top_block.in_feature)
    model_cfg.head_in_features = [shift(f) for f in model_cfg.head_in_features]
    model_cfg.anchor_generator.strides = [2 * s for s in model_cfg.anchor_generator.strides]


def _resnet34(args):
    cfg = _root_resnet34(args)
    stock_resnet_stem(cfg.model)
    return cfg


@dataclass
class Variant:
    label: str
    build_cfg: Callable
    source: str


@dataclass
class Pair:
    a: Variant
    b: Variant
    target: Optional[float]
    note: str = ""


PAIRS: Dict[str, Pair] = {
    "retinanet_coco_mini": Pair(
        Variant("Sampling-Free RetinaNet, narrow Root-ResNet-18-FPN", _sf_retinanet_coco_mini,
                "configs/coco_mini/sampling_free_root_resnet18_fpn_coco_mini.py"),
        Variant("focal-loss RetinaNet (Detectron2), same model", _focal_retinanet_coco_mini,
                "configs/coco_mini/scratchdet_root_resnet18_fpn_coco_mini.py"),
        target=1.00),
    "retinanet_R50_FPN": Pair(
        Variant("Sampling-Free RetinaNet R50-FPN", _sf_retinanet_r50,
                "configs/COCO/sampling_free_retinanet_R_50_FPN_1x.py"),
        Variant("Detectron2 RetinaNet R50-FPN (focal)", _d2_retinanet_r50,
                "detectron2 model_zoo COCO-Detection/retinanet_R_50_FPN_1x.py"),
        target=1.00),
    "faster_rcnn_R50_FPN": Pair(
        Variant("Sampling-Free Faster R-CNN R50-FPN", _sf_faster_rcnn_r50,
                "configs/COCO/sampling_free_faster_rcnn_R_50_FPN_1x.py"),
        Variant("Detectron2 Faster R-CNN R50-FPN (sampled RPN 256, ROI 512)", _d2_faster_rcnn_r50,
                "detectron2 model_zoo common/models/mask_rcnn_fpn.py without mask head"),
        target=1.15,
        note="SF trains the box head on every proposal (~1000 per image) instead of 512: a "
             "cost independent of the image size, so the ratio at a small --short-side is "
             "larger than at COCO's 800"),
    "cascade_rcnn_R50_FPN": Pair(
        Variant("Sampling-Free Cascade R-CNN R50-FPN", _sf_cascade_rcnn_r50,
                "configs/COCO/sampling_free_cascade_rcnn_R_50_FPN_1x.py"),
        Variant("Detectron2 Cascade R-CNN R50-FPN (sampled RPN 256, ROI 512 per stage)",
                _d2_cascade_rcnn_r50,
                "detectron2 model_zoo common/models/cascade_rcnn.py without mask head"),
        target=1.15,
        note="every stage trains on every proposal (~2000 per image) instead of 512"),
    "fcos_R50_FPN": Pair(
        Variant("Sampling-Free FCOS R50-FPN", _sf_fcos_r50,
                "configs/COCO/sampling_free_fcos_R_50_FPN_1x.py"),
        Variant("Detectron2 FCOS R50-FPN (focal)", _d2_fcos_r50,
                "detectron2 model_zoo COCO-Detection/fcos_R_50_FPN_1x.py"),
        target=1.00),
    "mask_rcnn_R50_FPN": Pair(
        Variant("Sampling-Free Mask R-CNN R50-FPN", _sf_mask_rcnn_r50,
                "configs/COCO/sampling_free_mask_rcnn_R_50_FPN_1x.py"),
        Variant("Detectron2 Mask R-CNN R50-FPN (sampled RPN 256, ROI 512)", _d2_mask_rcnn_r50,
                "detectron2 model_zoo COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"),
        target=1.15,
        note="the box head trains on every proposal; the mask head on the same foreground "
             "proposals in both"),
    "root_resnet34_vs_resnet34": Pair(
        Variant("RetinaNet-FPN on Root-ResNet-34 (3x3x3/1 root + 2x2/2 pool, p2..p6)",
                _root_resnet34, "--backbone-config with depth=34"),
        Variant("RetinaNet-FPN on ResNet-34 (7x7/2 + 3x3/2 pool, p3..p7)", _resnet34,
                "--backbone-config with depth=34 and DOWNSAMPLING_STUDY['resnet18'] stem"),
        target=None,
        note="no target: the root keeps 2x the resolution (the paper's accuracy/cost trade-off)"),
}


# -- building and stepping ----------------------------------------------------------------
@dataclass
class State:
    cfg: object
    model: object
    optimizer: object
    batch: List[Dict]
    storage: object
    info: Dict = field(default_factory=dict)


def check_strides(model) -> None:
    """The anchor strides must equal the strides of the features the head reads."""
    if not hasattr(model, "head_in_features"):
        return
    shapes = model.backbone.output_shape()
    strides = [shapes[f].stride for f in model.head_in_features]
    if list(strides) != [int(s) for s in model.anchor_generator.strides]:
        raise RuntimeError(f"anchor strides {model.anchor_generator.strides} do not match the "
                           f"feature strides {strides} of {model.head_in_features}")


def prepare(variant: Variant, args) -> State:
    import torch
    from detectron2.config import instantiate
    from detectron2.utils.events import EventStorage

    from scratchdet.sampling_free import prior_heads

    cfg = variant.build_cfg(args)
    common.set_train_resize(cfg, args.short_side, args.max_size)
    dicts, batch = common.fixed_batch(cfg, args.batch_size)
    torch.manual_seed(args.seed)
    model = instantiate(cfg.model)
    model.train()
    check_strides(model)
    # counted while the model is on the CPU: the estimator builds its ground-truth boxes
    # on the CPU and would meet CUDA anchors otherwise
    priors = common.set_priors_from(cfg, model, dicts) if prior_heads(model) else {}
    model.to(args.device)
    calibrated = common.calibrate_frozen_bn(model, batch)
    cfg.optimizer.params.model = model
    cfg.optimizer.lr = args.lr
    optimizer = instantiate(cfg.optimizer)
    info = {
        "source": variant.source,
        "meta_architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "priors": priors,
        "frozen_bn_layers_calibrated": calibrated,
        "image_sizes": [list(x["image"].shape[1:]) for x in batch],
        "image_ids": [d.get("image_id") for d in dicts],
        "num_boxes": [len(x["instances"]) for x in batch],
        "optimizer": {"type": type(optimizer).__name__, "lr": args.lr,
                      "momentum": cfg.optimizer.get("momentum", None),
                      "weight_decay": cfg.optimizer.get("weight_decay", None)},
    }
    return State(cfg, model, optimizer, batch, EventStorage(0), info)


def train_step(state: State) -> float:
    """One SimpleTrainer-style iteration; returns the total loss."""
    with state.storage:
        loss_dict = state.model(state.batch)
        losses = sum(loss_dict.values())
        state.optimizer.zero_grad()
        losses.backward()
        state.optimizer.step()
        total = float(losses.detach())
    state.storage.iter += 1
    return total


# -- CPU memory worker ------------------------------------------------------------------------
def memory_worker(payload: Dict) -> Dict:
    args = argparse.Namespace(**payload["settings"])
    common.set_threads(args.threads)
    pair = PAIRS[payload["pair"]]
    variant = pair.a if payload["variant"] == "a" else pair.b
    state = prepare(variant, args)
    common.collect()
    before = common.rss_mb()
    reset_ok = common.reset_peak_rss()
    peak0 = common.peak_rss_mb()
    losses = [train_step(state) for _ in range(args.memory_steps)]
    peak = common.peak_rss_mb()
    use = peak["vmhwm"] if reset_ok and peak["vmhwm"] is not None else peak["ru_maxrss"]
    return {"pair": payload["pair"], "variant": payload["variant"], "rss_before_mb": before,
            "hwm_reset": reset_ok, "peak_before_steps": peak0, "peak_after_steps": peak,
            "peak_source": "VmHWM" if use is peak["vmhwm"] else "ru_maxrss",
            "delta_mb": use - before, "steps": args.memory_steps, "losses": losses}


def cpu_memory(pairs: List[str], args) -> Dict[str, Dict]:
    settings = _worker_settings(args)
    out = {name: {"a": [], "b": [], "raw": []} for name in pairs}
    for r in range(args.memory_repeats):
        for name in pairs:
            for key in (("a", "b") if r % 2 == 0 else ("b", "a")):
                res = common.run_worker(f"benchmarks.{NAME}", {"pair": name, "variant": key,
                                                               "settings": settings})
                out[name][key].append(res["delta_mb"])
                out[name]["raw"].append(res)
                print(f"  memory {name} {key}: {res['delta_mb']:.0f} MB", flush=True)
    return out


def _worker_settings(args) -> Dict:
    keys = ("short_side", "max_size", "batch_size", "seed", "lr", "device", "memory_steps",
            "backbone_config", "threads")
    return {k: getattr(args, k) for k in keys}


# -- timing -------------------------------------------------------------------------------------
def time_pair(name: str, pair: Pair, args) -> Dict:
    import torch

    states = {"a": prepare(pair.a, args), "b": prepare(pair.b, args)}
    per = {"a": [], "b": [], "raw_a": [], "raw_b": [], "mem_a": [], "mem_b": [],
           "loss_a": [], "loss_b": []}
    cuda = args.device == "cuda"
    for r in range(args.repeats):
        for key in (("a", "b") if r % 2 == 0 else ("b", "a")):
            st = states[key]
            for _ in range(args.warmup):
                train_step(st)
            common.collect()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            times, losses = [], []
            for _ in range(args.steps):
                holder = {}
                times.append(common.timed(lambda: holder.setdefault("l", train_step(st)),
                                          args.device))
                losses.append(holder["l"])
            if cuda:
                per[f"mem_{key}"].append((torch.cuda.max_memory_allocated() - before) / MB)
            per[key].append(statistics.fmean(times))
            per[f"raw_{key}"].append(times)
            per[f"loss_{key}"].append(losses)
        print(f"  {name} repeat {r}: A {per['a'][-1]:.3f} s, B {per['b'][-1]:.3f} s, "
              f"A/B {per['a'][-1] / per['b'][-1]:.3f}", flush=True)
    info = {k: states[k].info for k in ("a", "b")}
    for k in ("a", "b"):
        flat = [x for rep in per[f"loss_{k}"] for x in rep]
        info[k]["nonfinite_loss_steps"] = sum(not math.isfinite(x) for x in flat)
        info[k]["losses_per_repeat"] = per[f"loss_{k}"]
        # what the last step logged: positive anchors, sampled/all ROI counts, loss terms
        info[k]["last_step_scalars"] = {n: float(v[0]) for n, v in
                                         states[k].storage.latest().items()}
    del states
    common.collect()
    if cuda:
        torch.cuda.empty_cache()
    return {"per": per, "info": info}


def main(argv=None):
    p = common.make_parser(NAME, __doc__, default_repeats=3)
    p.add_argument("--pairs", default=",".join(PAIRS),
                   help="comma-separated subset of: " + ", ".join(PAIRS))
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant and repeat "
                   "(default 2; 1 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before them "
                   "(default 1; 0 with --quick)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 2; "
                   "1 with --quick)")
    p.add_argument("--short-side", type=int, default=None, help="default 256; 128 with --quick")
    p.add_argument("--max-size", type=int, default=None, help="default 384; 192 with --quick")
    p.add_argument("--lr", type=float, default=0.0, help="SGD learning rate (default 0: same "
                   "arithmetic, the network stays as built)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-repeats", type=int, default=1,
                   help="CPU: subprocess runs per variant (default 1)")
    p.add_argument("--memory-steps", type=int, default=None,
                   help="CPU: steps per memory subprocess (default 2; 1 with --quick)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--backbone-config",
                   default="coco_mini/scratchdet_root_resnet18_fpn_coco_mini.py",
                   help="config (under configs/) of the root_resnet34_vs_resnet34 pair; its "
                   "depth is set to 34")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    common.quiet_logs()
    if args.worker:
        print(json.dumps(memory_worker(json.loads(args.worker))), flush=True)
        return 0
    args = common.finish_args(args)
    q = args.quick
    for k, full, quick in (("steps", 2, 1), ("warmup", 1, 0), ("batch_size", 2, 1),
                           ("short_side", 256, 128),
                           ("max_size", 384, 192), ("memory_steps", 2, 1)):
        if getattr(args, k) is None:
            setattr(args, k, quick if q else full)
    pairs = common.choose(args.pairs, list(PAIRS), "pair")

    started = time.time()
    env = common.environment(args.device)
    print(f"train_step on {env['device']['name']}: {len(pairs)} pair(s), {args.repeats} "
          f"repeats x {args.steps} steps, batch {args.batch_size} at short side "
          f"{args.short_side} (max {args.max_size})", flush=True)
    mem = None
    if args.device == "cpu" and not args.no_memory:
        # --quick: one pair's subprocesses are enough to check the path (each costs an
        # interpreter start and a model build)
        mem = cpu_memory(pairs[:1] if args.quick else pairs, args)

    comparisons, details = [], {}
    for name in pairs:
        pair = PAIRS[name]
        res = time_pair(name, pair, args)
        per = res["per"]
        comparisons.append(common.comparison(
            name, "train_step_seconds", "s", pair.a.label, pair.b.label, per["a"], per["b"],
            target=pair.target,
            raw={"a_step_seconds": per["raw_a"], "b_step_seconds": per["raw_b"]},
            note=pair.note or None))
        if args.device == "cuda":
            comparisons.append(common.comparison(
                name, "peak_memory_mb", "MB", pair.a.label, pair.b.label, per["mem_a"],
                per["mem_b"], note="max_memory_allocated - memory_allocated over the timed steps"))
        elif mem is not None and name in mem:
            comparisons.append(common.comparison(
                name, "peak_memory_mb", "MB", pair.a.label, pair.b.label, mem[name]["a"],
                mem[name]["b"], raw={"workers": mem[name]["raw"]},
                note="CPU: peak RSS during the steps minus RSS before the first step, one "
                     "subprocess per variant and repeat"))
        details[name] = res["info"]

    settings = {k: getattr(args, k) for k in ("pairs", "steps", "warmup", "batch_size",
                                              "short_side", "max_size", "lr", "seed",
                                              "memory_repeats", "memory_steps", "no_memory",
                                              "backbone_config")}
    settings["pairs"] = pairs
    settings["memory_pairs"] = list(mem) if mem else []
    settings["memory_method"] = ("cuda max_memory_allocated" if args.device == "cuda" else
                                 "cpu subprocess VmHWM - VmRSS" if not args.no_memory else None)
    return common.finish(NAME, args, settings, comparisons, started, env,
                         "train_step: seconds per iteration and peak memory, A/B",
                         variants=details)

if __name__ == "__main__":
    sys.exit(main())
