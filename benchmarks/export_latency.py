"""Deployment latency (issue 14): the demo detector and ScratchDet300 run eagerly, eagerly
with BatchNorm folded, as TorchScript and in ONNX Runtime, each timed as a ratio to eager.
The ``export`` section of ``python -m benchmarks.inference`` (``--sections export`` runs it
alone); always on the CPU.

Models (``MODELS``): configs/shapes/scratchdet_root_resnet18_fpn_demo.py (``make demo``:
narrow Root-ResNet-18-FPN RetinaNet, BN in backbone, FPN and head, the head's BN per level)
and configs/shapes/scratchdet300_root_resnet18_demo.py (ScratchDet300's design at the
demo's widths: Root-ResNet-18, SSD extra stages and SSD head with BN), built with random
weights (``--seed``) as their configs initialise them. Every BatchNorm then gets random
statistics and affine parameters (``scratchdet.export.perturb_batchnorm``): a fresh one is
the identity, and folding it would change nothing. Inputs: the benchmark's coco_mini val
images resized to 160 x 160, the shapes data's size, which the demo configs' test mappers
keep. Score thresholds: ScratchDet300 keeps its 0.01 (a random head's softmax scores spread
over the 3 classes and background: every anchor passes, the 1000 candidates per level and
the 200-detection cap apply, as for a trained SSD at 0.01). The RetinaNet's random sigmoid
scores all sit near the prior 0.01, below its 0.05: its threshold is set between the
``--export-candidates``-th (500) and the next highest (anchor, class) score of the first
image, about as many candidates as the trained coco_mini model of the predictor comparison
may have above 0.05.

Variants, each called on one (3, H, W) image as Detectron2's export API calls a model
(``model([{"image": x}])`` under no_grad, detections in the input's coordinates):

- ``eager``: the model as built;
- ``folded``: ``fold_batchnorm(copy.deepcopy(model))`` (the RetinaNet head's per-level
  BatchNorms by per-level copies of its convs; nothing is left unfolded);
- ``torchscript``: ``export_tracing`` of the folded model, traced on the first image;
- ``onnxruntime``: ``export_onnx`` of the folded model (opset 17, dynamic height and
  width) run by ``onnx_runner`` (CPUExecutionProvider, as many intra-op threads as torch),
  its outputs rebuilt into Instances.

Every variant runs twice on every image first (TorchScript's profiling executor optimises
on its second call); the second run's detections are compared with eager's, both in
``canonical_order``: same count and classes, boxes within 0.01 px and scores within 1e-4 x
the largest score (``assert_instances_allclose``'s tolerances at rtol 1e-4). Each repeat
then times the four in turn, mean seconds per image (eager, folded, torchscript,
onnxruntime; reversed in odd repeats), so that the three comparisons
``<model>_<variant>_vs_eager`` share eager's times. Target: ONNX Runtime <= 0.8 x eager.
"""
import copy
import os
import statistics
import warnings
from typing import Callable, Dict, List, NamedTuple

from . import common

SECTION = "export"
VARIANTS = ("eager", "folded", "torchscript", "onnxruntime")
TARGETS = {"onnxruntime": 0.8}
SIZE = (160, 160)  # the shapes data's images
BOX_ATOL = 0.01  # px
SCORE_RTOL = 1e-4  # of the largest score


class Model(NamedTuple):
    config: str  # relative to configs/
    label: str
    calibrate: bool  # set the score threshold from the candidate count (random sigmoid head)


MODELS = {
    "demo": Model("shapes/scratchdet_root_resnet18_fpn_demo.py",
                  "demo detector (narrow Root-ResNet-18-FPN RetinaNet, BN head)", True),
    "scratchdet300": Model("shapes/scratchdet300_root_resnet18_demo.py",
                           "ScratchDet300 at the demo's widths (Root-ResNet-18, SSD head)",
                           False),
}
LABELS = {
    "eager": "eager",
    "folded": "eager, BatchNorm folded (scratchdet.export.fold_batchnorm)",
    "torchscript": "TorchScript, traced (scratchdet.export.export_tracing), BN folded",
    "onnxruntime": "ONNX Runtime CPU (scratchdet.export.export_onnx, opset 17), BN folded",
}


def resized_inputs(images) -> List:
    """(3, 160, 160) uint8 tensors of the BGR ``images`` (H, W, 3 arrays)."""
    import cv2
    import torch

    return [torch.as_tensor(cv2.resize(im, (SIZE[1], SIZE[0])).transpose(2, 0, 1).copy())
            for im in images]


def threshold_for_candidates(model, image, k: int) -> float:
    """A score threshold with ``k`` (anchor, class) sigmoid scores of ``model``'s head above
    it on ``image`` (3, H, W): midway between the k-th and the next highest score."""
    import torch

    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        logits, _ = model.head([features[f] for f in model.head_in_features])
    scores = torch.cat([x.flatten() for x in logits]).sigmoid()
    top = scores.topk(min(k + 1, scores.numel())).values
    return float((top[-2] + top[-1]) / 2)


def compare_detections(eager, got) -> Dict:
    """Counts, class equality and largest box / score differences of two Instances, each
    in ``canonical_order``; ``same``: equal within the tolerances above."""
    from scratchdet.export import detection_differences

    out = {"eager": len(eager), "variant": len(got), "same_classes": None,
           "box_diff": None, "score_diff": None}
    if len(eager) == len(got) and len(eager):
        d = detection_differences(eager, got)
        out.update({k: d[k] for k in ("same_classes", "box_diff", "score_diff")})
        limit = SCORE_RTOL * float(d["eager"].scores.abs().max())
        out["same"] = (out["same_classes"] and out["box_diff"] <= BOX_ATOL
                       and out["score_diff"] <= limit)
    else:
        out["same"] = len(eager) == len(got)
    return out


def build_variants(key: str, args, first, tmp: str):
    """The model ``key`` of MODELS (random weights and BatchNorm statistics), its variants
    as functions of one image to its Instances, and what to record about them."""
    import torch
    from detectron2.config import instantiate

    from scratchdet.export import (
        batchnorm_modules, export_onnx, export_tracing, fold_batchnorm, onnx_runner,
        perturb_batchnorm)

    spec = MODELS[key]
    cfg = common.load_config(spec.config, ["train.device=cpu"])
    torch.manual_seed(args.seed)
    model = instantiate(cfg.model).eval()
    # BatchNorms (a CycleBatchNormList counts once) before and after folding
    info = {"config": "configs/" + spec.config,
            "batchnorms_before_folding": len(batchnorm_modules(model)),
            "batchnorms_perturbed": perturb_batchnorm(model, args.seed)}
    if spec.calibrate:
        model.test_score_thresh = threshold_for_candidates(model, first, args.export_candidates)
    info["score_threshold"] = float(model.test_score_thresh)
    folded = fold_batchnorm(copy.deepcopy(model))
    info["batchnorms_left_after_folding"] = [list(x) for x in batchnorm_modules(folded)]
    path = os.path.join(tmp, f"{key}.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings (tests check the traces)
        traced, adapter = export_tracing(folded, [{"image": first}])
        ort = onnx_runner(path, export_onnx(folded, [{"image": first}], path))
    info["onnx_bytes"] = os.path.getsize(path)

    def call(m):
        return lambda x: m([{"image": x}])[0]["instances"]

    runs = {"eager": call(model), "folded": call(folded),
            "torchscript": lambda x: adapter.outputs_schema(traced(x))[0]["instances"],
            "onnxruntime": lambda x: ort(x)[0]["instances"]}
    return runs, info


def time_variants(runs: Dict[str, Callable], inputs, repeats: int) -> Dict[str, List]:
    """Mean seconds per image of each variant per repeat, order reversed in odd repeats;
    also the per-image times (``raw_<variant>``)."""
    import torch

    out = {k: [] for k in VARIANTS}
    out.update({f"raw_{k}": [] for k in VARIANTS})
    for r in range(repeats):
        for key in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
            common.collect()
            with torch.no_grad():
                times = [common.timed(lambda: runs[key](x), "cpu") for x in inputs]
            out[key].append(statistics.fmean(times))
            out[f"raw_{key}"].append(times)
    return out


def export_comparisons(args, images, tmp: str):
    """The section's comparisons (three per model of MODELS, on ``images``: BGR arrays)
    and the settings it records."""
    import torch

    inputs = resized_inputs(images)
    comparisons, settings = [], {"image_size": list(SIZE), "models": {},
                                 "candidates": args.export_candidates}
    for key, spec in MODELS.items():
        runs, info = build_variants(key, args, inputs[0], tmp)
        with torch.no_grad():
            for _ in range(2):  # warm-up; the second run's detections are checked
                outs = {k: [run(x) for x in inputs] for k, run in runs.items()}
        checks = {k: [compare_detections(e, g) for e, g in zip(outs["eager"], outs[k])]
                  for k in VARIANTS[1:]}
        info["eager_detections_per_image"] = [len(x) for x in outs["eager"]]
        settings["models"][key] = info
        t = time_variants(runs, inputs, args.repeats)
        line = ", ".join(f"{k} {statistics.median(t[k]) * 1000:.1f} ms" for k in VARIANTS)
        print(f"  {key}: {line} per image", flush=True)
        for k, check in checks.items():
            same = sum(x["same"] for x in check)
            diffs = [x["box_diff"] for x in check if x["box_diff"] is not None]
            c = common.comparison(
                f"{key}_{k}_vs_eager", "seconds_per_image", "s", f"{spec.label}: {LABELS[k]}",
                f"{spec.label}: eager", t[k], t["eager"], target=TARGETS.get(k),
                raw={"a_seconds_per_image": t[f"raw_{k}"],
                     "b_seconds_per_image": t["raw_eager"], "detections": check})
            c["detections"] = {"same_as_eager": same == len(check), "images": len(check),
                               "images_same": same,
                               "largest_box_diff": max(diffs) if diffs else None}
            c["check"] = (f"detections equal eager's on {same}/{len(check)} images"
                          + (f" (largest box difference {max(diffs):.2g} px)" if diffs else ""))
            comparisons.append(c)
    return comparisons, settings
