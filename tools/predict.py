#!/usr/bin/env python
"""
Run a trained detector on your own images:

    python tools/predict.py --config-file CONFIG --weights CKPT --input IMG_OR_DIR --output DIR

CONFIG is a LazyConfig (.py; trailing ``key=value`` overrides) or a yacs config (.yaml;
trailing ``KEY VALUE`` pairs, run through Detectron2's ``DefaultPredictor``). CKPT is a
checkpoint written by ``train_net.py`` (e.g. OUTPUT/model_final.pth); Sampling-Free
models apply the adaptive score threshold it carries. Writes

    DIR/<image stem>.png   the image with its detections drawn by Detectron2's Visualizer
                           (those scoring at least --vis-threshold; masks too when the
                           model predicts them)
    DIR/detections.json    every detection, COCO result format
                           [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}],
                           plus "segmentation" for a mask model: the detection's mask as
                           COCO RLE {"size": [h, w], "counts": str}, which
                           pycocotools.mask.decode reads back
    DIR/images.json        the COCO "images" entries those ids refer to
                           [{"id", "file_name", "height", "width"}]

Image ids are the ids of the config's test dataset when an image's file name is in its
annotation file (so detections.json can be scored against it with pycocotools), else the
number in the file name, else the position in the sorted input. Category ids are the
dataset's own (COCO's 1..90) when its metadata maps them, else 0..K-1.
"""
import argparse
import json
import os
import sys

import cv2
import numpy as np
import torch
import tqdm
from pycocotools import mask as mask_util

from detectron2.data import detection_utils as utils
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import scratchdet  # noqa: E402,F401  (registers backbones, meta-architectures, datasets)
from scratchdet.engine.predictor import build_predictor  # noqa: E402
from scratchdet.io import write_json_atomic  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(path: str):
    """The image files at ``path`` (one file, or a directory's images, sorted)."""
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise FileNotFoundError(
                f"--input {path!r}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    raise FileNotFoundError(f"--input {path!r} does not exist")


def coco_index(metadata):
    """({file name: image id}, {contiguous class: category id}) from the metadata's COCO
    annotation file; empty when it has none. Classes map to the sorted category ids, as
    Detectron2's ``load_coco_json`` maps them."""
    mapping = getattr(metadata, "thing_dataset_id_to_contiguous_id", None) if metadata else None
    cat_map = {v: int(k) for k, v in mapping.items()} if mapping else {}
    json_file = getattr(metadata, "json_file", None) if metadata is not None else None
    if not json_file or not os.path.isfile(json_file):
        return {}, cat_map
    with open(json_file) as f:
        coco = json.load(f)
    ids = {os.path.basename(im["file_name"]): int(im["id"]) for im in coco.get("images", [])}
    if not cat_map:
        cat_ids = sorted(c["id"] for c in coco.get("categories", []))
        cat_map = {i: int(c) for i, c in enumerate(cat_ids)}
    return ids, cat_map


def encode_masks(masks: torch.Tensor):
    """COCO RLEs ({"size": [h, w], "counts": str}) of (N, H, W) bool masks."""
    arr = np.asfortranarray(masks.numpy().astype(np.uint8).transpose(1, 2, 0))
    rles = mask_util.encode(arr) if len(masks) else []
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def coco_results(instances, image_id, cat_map):
    """COCO result dicts of one image's detections (with an RLE ``segmentation`` each when
    ``instances`` has ``pred_masks``, (N, H, W) bool)."""
    boxes = instances.pred_boxes.tensor.numpy().tolist()
    scores = instances.scores.numpy().tolist()
    classes = instances.pred_classes.numpy().tolist()
    out = []
    for (x0, y0, x1, y1), s, c in zip(boxes, scores, classes):
        out.append({"image_id": image_id,
                    "category_id": cat_map[c] if cat_map else int(c),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(s)})
    if instances.has("pred_masks"):
        for det, rle in zip(out, encode_masks(instances.pred_masks)):
            det["segmentation"] = rle
    return out


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="LazyConfig (.py) or yacs (.yaml)")
    p.add_argument("--weights", required=True, help="checkpoint written by train_net.py")
    p.add_argument("--input", required=True, help="an image file or a directory of images")
    p.add_argument("--output", required=True, help="directory for PNGs and detections.json")
    p.add_argument("--vis-threshold", type=float, default=0.3,
                   help="draw detections scoring at least this (detections.json keeps all)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("opts", nargs=argparse.REMAINDER,
                   help="config overrides: key=value (.py) or KEY VALUE (.yaml)")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="scratchdet")
    images = list_images(args.input)
    predictor = build_predictor(args.config_file, args.weights, args.opts, args.device)
    metadata = predictor.metadata if hasattr(predictor, "metadata") else None
    ids, cat_map = coco_index(metadata)
    os.makedirs(args.output, exist_ok=True)
    results, image_entries, used_ids = [], [], set()
    for i, path in enumerate(tqdm.tqdm(images, desc="predict", unit="img")):
        img = utils.read_image(path, format="BGR")
        name = os.path.basename(path)
        stem = os.path.splitext(name)[0]
        image_id = ids.get(name, int(stem) if stem.isdigit() else i + 1)
        if image_id in used_ids or stem in used_ids:
            raise ValueError(f"{path}: its image id {image_id} or output name {stem}.png is "
                             "already used by another input image")
        used_ids.update((image_id, stem))
        inst = predictor(img)["instances"].to("cpu")
        results.extend(coco_results(inst, image_id, cat_map))
        image_entries.append({"id": image_id, "file_name": name,
                              "height": int(img.shape[0]), "width": int(img.shape[1])})
        shown = inst[inst.scores >= args.vis_threshold]
        vis = Visualizer(img[:, :, ::-1], metadata).draw_instance_predictions(shown)
        cv2.imwrite(os.path.join(args.output, stem + ".png"), vis.get_image()[:, :, ::-1])
    write_json_atomic(os.path.join(args.output, "detections.json"), results)
    write_json_atomic(os.path.join(args.output, "images.json"), image_entries)
    print(f"{len(images)} images, {len(results)} detections -> {args.output}")
    return results


if __name__ == "__main__":
    with torch.no_grad():
        main()
