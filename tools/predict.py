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
    DIR/images.json        {"images": the COCO "images" entries those ids refer to,
                                       [{"id", "file_name", "height", "width"}],
                            "skipped": the inputs that could not be read or decoded,
                                       [{"file_name", "path", "reason"}]}

Image ids are the ids of the config's test dataset when an image's file name is in its
annotation file (so detections.json can be scored against it with pycocotools), else the
number in the file name, else the position in the sorted input. Category ids are the
dataset's own (COCO's 1..90) when its metadata maps them, else 0..K-1.

An input that cannot be read or decoded as an image is skipped with a warning naming it,
and the others are predicted; with --strict, every input is decoded first and the first
bad one is an error before anything is written. A checkpoint that does not fit the
config's model (another class count or architecture) is refused, naming the parameters
whose shapes differ or that it lacks. Exit status: 0 when every input was predicted,
3 when some were skipped (the results of the others are written), 1 on an error
(nothing written), 2 on a command-line usage error.
"""
import argparse
import json
import logging
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
from scratchdet.engine.checkpoint import CheckpointMismatchError  # noqa: E402
from scratchdet.engine.predictor import build_predictor  # noqa: E402
from scratchdet.io import write_json_atomic  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
EXIT_SKIPPED = 3  # finished, but some inputs could not be read (see the module docstring)

logger = logging.getLogger("scratchdet.predict")


class BadInputError(ValueError):
    """An input image that cannot be read or decoded (raised under --strict)."""


def read_input(path: str):
    """(the (H, W, 3) BGR image at ``path``, None), or (None, why it cannot be read or
    decoded): a missing or unreadable file, or one that is not an image PIL decodes."""
    try:
        return utils.read_image(path, format="BGR"), None
    except Exception as e:  # PIL and the OS raise many types for a bad file; all mean skip
        return None, f"{type(e).__name__}: {e}"


def image_ids(images, ids):
    """The image id and output stem of each input: its id in ``ids`` (file name -> id),
    else the number in its file name, else its position in ``images`` (1-based). Raises
    ``ValueError`` naming the file when two inputs would share an id or a PNG name."""
    out, used = [], set()
    for i, path in enumerate(images):
        name = os.path.basename(path)
        stem = os.path.splitext(name)[0]
        image_id = ids.get(name, int(stem) if stem.isdigit() else i + 1)
        if image_id in used or stem in used:
            raise ValueError(f"{path}: its image id {image_id} or output name {stem}.png is "
                             "already used by another input image")
        used.update((image_id, stem))
        out.append((image_id, stem))
    return out


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
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status:\n"
               "  0  every input was predicted\n"
               f"  {EXIT_SKIPPED}  some inputs could not be read and were skipped (listed in "
               "images.json);\n     the others' results are written\n"
               "  1  error, nothing written (a missing input, --strict and a bad input, a\n"
               "     checkpoint that does not fit the config)\n"
               "  2  command-line usage error")
    p.add_argument("--config-file", required=True, help="LazyConfig (.py) or yacs (.yaml)")
    p.add_argument("--weights", required=True, help="checkpoint written by train_net.py")
    p.add_argument("--input", required=True, help="an image file or a directory of images")
    p.add_argument("--output", required=True, help="directory for PNGs and detections.json")
    p.add_argument("--vis-threshold", type=float, default=0.3,
                   help="draw detections scoring at least this (detections.json keeps all)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--strict", action="store_true",
                   help="decode every input first and fail on the first one that cannot be "
                        "read, before writing anything (default: skip it with a warning)")
    p.add_argument("opts", nargs=argparse.REMAINDER,
                   help="config overrides: key=value (.py) or KEY VALUE (.yaml)")
    return p


def predict(args):
    """Predict every readable input of ``args`` and write the outputs (module docstring).
    Returns (COCO results, image entries, skipped entries)."""
    images = list_images(args.input)
    if args.strict:  # nothing is built or written unless every input decodes
        for path in tqdm.tqdm(images, desc="check inputs", unit="img"):
            why = read_input(path)[1]
            if why:
                raise BadInputError(f"--strict: input {path!r} cannot be read as an image "
                                    f"({why}); nothing was written")
    predictor = build_predictor(args.config_file, args.weights, args.opts, args.device)
    metadata = predictor.metadata if hasattr(predictor, "metadata") else None
    ids, cat_map = coco_index(metadata)
    named = image_ids(images, ids)
    os.makedirs(args.output, exist_ok=True)
    results, image_entries, skipped = [], [], []
    for path, (image_id, stem) in zip(tqdm.tqdm(images, desc="predict", unit="img"), named):
        img, why = read_input(path)
        name = os.path.basename(path)
        if img is None:
            if args.strict:  # decoded in the check above: the file changed since
                raise BadInputError(f"--strict: input {path!r} cannot be read ({why})")
            logger.warning("skipping %s: it cannot be read as an image (%s)", path, why)
            skipped.append({"file_name": name, "path": path, "reason": why})
            continue
        inst = predictor(img)["instances"].to("cpu")
        results.extend(coco_results(inst, image_id, cat_map))
        image_entries.append({"id": image_id, "file_name": name,
                              "height": int(img.shape[0]), "width": int(img.shape[1])})
        shown = inst[inst.scores >= args.vis_threshold]
        vis = Visualizer(img[:, :, ::-1], metadata).draw_instance_predictions(shown)
        cv2.imwrite(os.path.join(args.output, stem + ".png"), vis.get_image()[:, :, ::-1])
    write_json_atomic(os.path.join(args.output, "detections.json"), results)
    write_json_atomic(os.path.join(args.output, "images.json"),
                      {"images": image_entries, "skipped": skipped})
    return results, image_entries, skipped


def main(argv=None) -> int:
    """Run the tool; returns its exit status (module docstring)."""
    args = get_parser().parse_args(argv)
    setup_logger(name="scratchdet")
    try:
        with torch.no_grad():
            results, entries, skipped = predict(args)
    except (BadInputError, CheckpointMismatchError, FileNotFoundError) as e:
        print(f"predict.py: error: {e}", file=sys.stderr)
        return 1
    print(f"{len(entries)} images, {len(results)} detections -> {args.output}")
    if skipped:
        print(f"{len(skipped)} input(s) skipped, listed in "
              f"{os.path.join(args.output, 'images.json')}: "
              + ", ".join(s["path"] for s in skipped), file=sys.stderr)
        return EXIT_SKIPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
