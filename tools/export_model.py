#!/usr/bin/env python
"""Export a scratchdet detector to TorchScript or ONNX, shaped like Detectron2's
``tools/deploy/export_model.py``.

    python tools/export_model.py --config-file CONFIG --weights model_final.pth \\
        --format torchscript|onnx --export-method tracing|scripting --output DIR \\
        [--fold-bn] [--sample-image IMG] [--run-eval] [KEY=VALUE | KEY VALUE ...]

The config is a LazyConfig (``.py``) or its YAML twin; a checkpoint that does not fit its
model is refused (``load_fitting_checkpoint``). The buffers the checkpoint carries (the
Sampling-Free prior and its adaptive thresholds) are part of the exported model. Tracing
uses one sample image (default: the first coco_mini val image) after the config's test
resizing; ``--run-eval`` evaluates the exported model on the config's first test dataset
with ``COCOEvaluator`` and prints its AP next to the eager model's. ``--fold-bn`` exports
a copy of the model with every BatchNorm folded into the convolution before it
(``scratchdet.export.fold_batchnorm``; off by default, so that the exported model keeps the
checkpoint's modules); the eager model it is compared with keeps its BatchNorms.
"""
import argparse
import copy
import glob
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "projects"))

import detectron2.data.transforms as T  # noqa: E402
from detectron2.data import detection_utils as utils  # noqa: E402
from detectron2.evaluation import COCOEvaluator, inference_on_dataset, print_csv_format  # noqa
from detectron2.modeling.postprocessing import detector_postprocess  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from detectron2.utils.testing import convert_scripted_instances  # noqa: E402

from scratchdet.data import coco_mini_root  # noqa: E402
from scratchdet.engine.predictor import build_predictor  # noqa: E402
from scratchdet.export import (  # noqa: E402
    batchnorm_modules, detection_differences, export_onnx, export_scripting, export_tracing,
    fold_batchnorm, onnx_runner, tracing_inference)


def default_sample_image() -> str:
    files = sorted(glob.glob(os.path.join(coco_mini_root(), "val2017", "*.jpg")))
    if not files:
        raise FileNotFoundError("no coco_mini val image: pass --sample-image")
    return files[0]


def sample_inputs(predictor, path: str):
    """[{"image": (3, H, W)}]: the image as the config's test mapper resizes it."""
    image = utils.read_image(path, format=predictor.input_format)
    aug_input = T.AugInput(image)
    predictor.aug(aug_input)
    return [{"image": torch.as_tensor(aug_input.image.transpose(2, 0, 1).copy())}]


def export(args, model, inputs):
    """Writes the model under args.output; returns a function of one input dict to the
    exported model's [{"instances"}] in the resized image's coordinates."""
    rcnn = tracing_inference(model) is not None
    if args.format == "onnx":
        if args.export_method != "tracing":
            raise SystemExit("ONNX export goes through tracing: use --export-method tracing")
        path = os.path.join(args.output, "model.onnx")
        run = onnx_runner(path, export_onnx(model, inputs, path))
        return lambda x: run(x["image"])
    if args.export_method == "tracing":
        traced, adapter = export_tracing(model, inputs, args.output)
        return lambda x: adapter.outputs_schema(traced(x["image"]))
    scripted = export_scripting(model, args.output)
    if rcnn:
        return lambda x: [{"instances": scripted.inference([x], do_postprocess=False)[0]}]
    # a scripted dense detector returns its Instances before detector_postprocess, which
    # the traced one includes (clipping to the image)
    return lambda x: [{"instances": detector_postprocess(
        convert_scripted_instances(scripted([x])[0]), x["image"].shape[1], x["image"].shape[2])}]


def compare_on_sample(model, run, x):
    """Print the eager and exported detections on the sample image (counts, largest
    box and score differences, row by row in :func:`canonical_order`); returns both
    Instances in that order."""
    inference = tracing_inference(model)
    with torch.no_grad():
        eager = (inference(model, [x]) if inference else model([x]))[0]["instances"]
        got = run(x)[0]["instances"]
    d = detection_differences(eager, got)
    print(f"sample image: eager {len(d['eager'])} detections, exported {len(d['got'])}; "
          f"largest box difference {d['box_diff']:.3g} px, score difference "
          f"{d['score_diff']:.3g}")
    return d["eager"], d["got"]


class ExportedModel(torch.nn.Module):
    """The exported model as an evaluator sees a Detectron2 model: each input's
    detections rescaled to its original "height" x "width"."""

    def __init__(self, run):
        super().__init__()
        self.run = run

    def forward(self, inputs):
        out = []
        for x in inputs:
            instances = self.run({"image": x["image"]})[0]["instances"]
            out.append({"instances": detector_postprocess(instances, x["height"], x["width"])})
        return out


def test_loader_and_evaluator(predictor, output: str):
    cfg = predictor.cfg
    if hasattr(cfg, "dataloader"):  # LazyConfig
        from detectron2.config import instantiate

        loader = instantiate(cfg.dataloader.test)
        names = cfg.dataloader.test.dataset.names
        name = names if isinstance(names, str) else names[0]
    else:
        from detectron2.data import build_detection_test_loader

        name = cfg.DATASETS.TEST[0]
        loader = build_detection_test_loader(cfg, name)
    return loader, COCOEvaluator(name, output_dir=output)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    p.add_argument("--export-method", choices=["tracing", "scripting"], default="tracing")
    p.add_argument("--fold-bn", action="store_true",
                   help="export the model with its BatchNorms folded into the convolutions")
    p.add_argument("--sample-image", default=None)
    p.add_argument("--output", required=True)
    p.add_argument("--run-eval", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = p.parse_args(argv)
    logger = setup_logger(name="scratchdet")
    os.makedirs(args.output, exist_ok=True)
    predictor = build_predictor(args.config_file, args.weights, args.opts, device="cpu")
    model = predictor.model.eval()
    inputs = sample_inputs(predictor, args.sample_image or default_sample_image())
    exported = model
    if args.fold_bn:
        exported = fold_batchnorm(copy.deepcopy(model))
        logger.info("BatchNorm folded; left unfolded: %s", batchnorm_modules(exported) or "none")
    with torch.no_grad():
        run = export(args, exported, inputs)
    logger.info("exported %s (%s) to %s", args.format, args.export_method, args.output)
    results = {"sample": compare_on_sample(model, run, inputs[0])}
    if not args.run_eval:
        return results
    for label, m in (("eager", model), ("exported", ExportedModel(run))):
        loader, evaluator = test_loader_and_evaluator(predictor, args.output)
        with torch.no_grad():
            results[label] = inference_on_dataset(m, loader, evaluator)
        print_csv_format(results[label])
    for label in ("eager", "exported"):
        r = results[label]
        print(f"{label} bbox AP: {r['bbox']['AP']:.4f}  AP50: {r['bbox']['AP50']:.4f}")
    return results


if __name__ == "__main__":
    main()
