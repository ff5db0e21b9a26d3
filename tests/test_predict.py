"""Inference outside training: Detectron2's DefaultPredictor with the YAML configs on
checkpoints written by train_net.py from the LazyConfigs, and tools/predict.py."""
import glob
import json
import os
import shutil
import subprocess
import sys

import cv2
import pytest
import torch
from pycocotools.coco import COCO

from detectron2.data import detection_utils as utils
from detectron2.engine import DefaultPredictor

from scratchdet.engine import load_config
from scratchdet.engine.predictor import LazyPredictor, build_predictor
from scratchdet.evaluation import inference_thresholds

from conftest import REPO, SF_COCO_MINI

SF_COCO_MINI_YAML = SF_COCO_MINI[:-3] + ".yaml"


def _val_images(coco_mini, n=3):
    return sorted(glob.glob(os.path.join(coco_mini, "val2017", "*.jpg")))[:n]


def _same(a, b):
    assert len(a) == len(b)
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert torch.allclose(a.scores, b.scores, rtol=1e-4, atol=1e-7)
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-3)


@pytest.mark.parametrize("which", ["train_net", "low_threshold"])
def test_default_predictor_with_yaml_matches_the_lazyconfig_model(
        which, sf_coco_mini_run, low_threshold_checkpoint, coco_mini):
    if which == "train_net":
        weights = str(sf_coco_mini_run / "model_final.pth")
    else:
        weights = str(low_threshold_checkpoint[0])
    lazy = LazyPredictor(load_config(SF_COCO_MINI, ["train.device=cpu"]), weights)
    yacs = build_predictor(SF_COCO_MINI_YAML, weights, device="cpu")
    assert isinstance(yacs, DefaultPredictor)
    assert type(yacs.model).__name__ == "SamplingFreeRetinaNet"
    # the adaptive threshold comes from the checkpoint, in both
    thr = inference_thresholds(yacs.model)
    assert torch.equal(thr, inference_thresholds(lazy.model))
    ckpt = torch.load(weights, map_location="cpu", weights_only=False)["model"]
    assert torch.equal(thr, ckpt["prior_state.score_thresholds"])
    if which == "low_threshold":
        assert float(thr[0]) == pytest.approx(low_threshold_checkpoint[1], rel=1e-5)
    else:
        prior = float(ckpt["prior_state.prior"])
        assert 0 < prior < 1e-3 and float(thr[0]) == pytest.approx(80 * prior, rel=1e-5)
    total = 0
    for path in _val_images(coco_mini):
        img = utils.read_image(path, format="BGR")
        a, b = lazy(img)["instances"], yacs(img)["instances"]
        _same(a, b)
        assert a.image_size == img.shape[:2]
        if len(b):
            assert bool((b.scores > thr[b.pred_classes]).all())
        total += len(b)
    if which == "low_threshold":
        assert total > 10


def _predict(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(REPO, "tools", "predict.py")] + args,
                       cwd=str(cwd), env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p


@pytest.mark.parametrize("config", [SF_COCO_MINI_YAML, SF_COCO_MINI])
def test_predict_tool_writes_pngs_and_a_coco_results_file(
        config, low_threshold_checkpoint, coco_mini, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for p in _val_images(coco_mini):
        shutil.copy(p, images)
    out = tmp_path / "out"
    p = _predict(["--config-file", config, "--weights", str(low_threshold_checkpoint[0]),
                  "--input", str(images), "--output", str(out), "--vis-threshold", "0",
                  "--device", "cpu"], tmp_path)
    assert "predict" in p.stderr  # the progress bar
    for src in _val_images(coco_mini):
        stem = os.path.splitext(os.path.basename(src))[0]
        png = cv2.imread(str(out / f"{stem}.png"))
        assert png is not None and png.shape == cv2.imread(src).shape
        assert not (png == cv2.imread(src)).all()  # boxes were drawn
    gt = COCO(os.path.join(coco_mini, "annotations", "instances_val2017.json"))
    with open(out / "detections.json") as f:
        dets = json.load(f)
    assert len(dets) > 10
    res = gt.loadRes(str(out / "detections.json"))
    assert len(res.getAnnIds()) == len(dets)
    names = {os.path.basename(p) for p in _val_images(coco_mini)}
    gt_ids = {im["id"] for im in gt.loadImgs(gt.getImgIds()) if im["file_name"] in names}
    assert {d["image_id"] for d in dets} <= gt_ids
    assert {d["category_id"] for d in dets} <= set(gt.getCatIds())
    with open(out / "images.json") as f:
        assert {im["id"] for im in json.load(f)} == gt_ids
    # the same detections DefaultPredictor gives for these images
    pred = build_predictor(SF_COCO_MINI_YAML, str(low_threshold_checkpoint[0]), device="cpu")
    expected = sum(len(pred(utils.read_image(p, format="BGR"))["instances"])
                   for p in _val_images(coco_mini))
    assert len(dets) == expected


def test_predict_tool_names_a_missing_input(low_threshold_checkpoint, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    missing = tmp_path / "no_such_dir"
    p = subprocess.run([sys.executable, os.path.join(REPO, "tools", "predict.py"),
                        "--config-file", SF_COCO_MINI, "--weights",
                        str(low_threshold_checkpoint[0]), "--input", str(missing),
                        "--output", str(tmp_path / "o")],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and str(missing) in p.stderr
    assert not os.path.exists(tmp_path / "o")
