#!/usr/bin/env python
"""
`make demo`: train the ScratchDet Root-ResNet detector (Sampling-Free loss) from scratch on the embedded
shapes data (generated on first use), evaluate it with Detectron2's COCOEvaluator,
and write

    OUTPUT/metrics.json        AP, AP50, AP75, APs, APm, APl (at the adaptive threshold for
                               Sampling-Free configs), AP_at_fixed_0.05, iterations,
                               wall_time_s, ...
    OUTPUT/predictions/*.png   val images with predictions drawn by Detectron2's Visualizer
    OUTPUT/train/              checkpoints, TensorBoard events, Detectron2's metrics.json

wall_time_s counts everything this command does (data generation, training, evaluation,
drawing), from start to the write of metrics.json.
"""
import argparse
import json
import math
import os
import sys
import time

T0 = time.time()

import cv2  # noqa: E402
import torch  # noqa: E402

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data import detection_utils as utils  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from detectron2.utils.visualizer import Visualizer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import scratchdet  # noqa: E402,F401
from scratchdet.engine import build_model, do_train, load_config  # noqa: E402
from scratchdet.engine.checkpoint import check_output_dir  # noqa: E402
from scratchdet.io import write_json_atomic  # noqa: E402

# Sampling-Free beat focal loss on the embedded data at equal wall time (see README)
DEFAULT_CONFIG = os.path.join(REPO, "configs", "shapes", "sampling_free_root_resnet18_fpn_demo.py")


def _finite_or_none(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def draw_predictions(model, dataset_name, out_dir, num_images=6, score_thresh=0.3):
    os.makedirs(out_dir, exist_ok=True)
    meta = MetadataCatalog.get(dataset_name)
    model.eval()
    paths = []
    for d in DatasetCatalog.get(dataset_name)[:num_images]:
        img = utils.read_image(d["file_name"], format="BGR")
        inp = torch.as_tensor(img.transpose(2, 0, 1).astype("float32"))
        with torch.no_grad():
            inst = model([{"image": inp, "height": img.shape[0], "width": img.shape[1]}])[0]
        inst = inst["instances"].to("cpu")
        inst = inst[inst.scores > score_thresh]
        vis = Visualizer(img[:, :, ::-1], meta, scale=3.0).draw_instance_predictions(inst)
        path = os.path.join(out_dir, os.path.splitext(os.path.basename(d["file_name"]))[0] + ".png")
        cv2.imwrite(path, vis.get_image()[:, :, ::-1])
        paths.append(path)
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG)
    p.add_argument("--output", default="output/demo")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoints in OUTPUT/train")
    p.add_argument("--overwrite", action="store_true",
                   help="train again even if OUTPUT/train holds checkpoints, replacing them "
                        "(without it or --resume, such a directory is refused)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = p.parse_args(argv)

    setup_logger(name="detectron2")
    logger = setup_logger(name="scratchdet")
    cfg = load_config(args.config_file, args.opts)
    cfg.train.output_dir = os.path.join(args.output, "train")
    check_output_dir(cfg.train.output_dir, resume=args.resume, overwrite=args.overwrite)
    os.makedirs(cfg.train.output_dir, exist_ok=True)
    torch.manual_seed(cfg.get("seed", 0) if hasattr(cfg, "get") else 0)

    model = build_model(cfg)
    results = do_train(cfg, model, resume=args.resume)
    if not results or "bbox" not in results:
        raise RuntimeError("training finished without a COCO evaluation; "
                           "set train.eval_period so that the last iteration evaluates")
    bbox = results["bbox"]
    test_name = cfg.dataloader.test.dataset.names
    test_name = test_name if isinstance(test_name, str) else test_name[0]
    pngs = draw_predictions(model, test_name, os.path.join(args.output, "predictions"))

    metrics = {k: _finite_or_none(bbox.get(k)) for k in ["AP", "AP50", "AP75", "APs", "APm", "APl"]}
    fixed = results.get("bbox@0.05")  # Sampling-Free configs: AP at the fixed 0.05 too
    if fixed:
        metrics["AP_at_fixed_0.05"] = _finite_or_none(fixed.get("AP"))
    metrics.update(
        iterations=int(cfg.train.max_iter),
        wall_time_s=round(time.time() - T0, 1),
        config=os.path.relpath(os.path.abspath(args.config_file), REPO),
        dataset=test_name,
        per_category={k[len("AP-"):]: _finite_or_none(v) for k, v in bbox.items()
                      if k.startswith("AP-")},
        predictions=[os.path.relpath(x, args.output) for x in pngs],
        torch_threads=torch.get_num_threads(),
    )
    path = write_json_atomic(os.path.join(args.output, "metrics.json"), metrics, indent=2)
    logger.info("demo metrics written to %s:\n%s", path, json.dumps(metrics, indent=2))
    print(json.dumps({k: metrics[k] for k in ["AP", "AP50", "APs", "APm", "APl",
                                              "AP_at_fixed_0.05", "iterations",
                                              "wall_time_s"] if k in metrics}))
    return metrics


if __name__ == "__main__":
    main()
