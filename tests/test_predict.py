"""Inference outside training: Detectron2's DefaultPredictor with the YAML configs on
checkpoints written by train_net.py from the LazyConfigs, and tools/predict.py."""
import glob
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
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


def _predict(args, cwd, status=0):
    """Run tools/predict.py; it must exit with ``status``."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(REPO, "tools", "predict.py")] + args,
                       cwd=str(cwd), env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == status, p.stdout[-3000:] + p.stderr[-5000:]
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
        listed = json.load(f)
    assert {im["id"] for im in listed["images"]} == gt_ids and listed["skipped"] == []
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


SF_MASK_COCO_MINI = os.path.join(
    REPO, "configs", "coco_mini", "sampling_free_mask_rcnn_root_resnet18_fpn_coco_mini.py")


@pytest.fixture(scope="module")
def mask_rcnn_checkpoint(coco_mini, tmp_path_factory):
    """A random-weight Sampling-Free Mask R-CNN (coco_mini config) as a checkpoint: RPN
    prior set, BatchNorm statistics of two val images (so eval-mode activations stay in
    range and boxes and masks come out)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate

    from scratchdet.sampling_free.prior import PriorCounts

    cfg = load_config(SF_MASK_COCO_MINI, ["train.device=cpu"])
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    model.proposal_generator.set_prior(PriorCounts(
        num_classes=1, num_foreground=30, num_valid=10000, per_class=[30], num_images=10,
        stderr=1e-4))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.momentum = None  # cumulative average
    mapper = instantiate(cfg.dataloader.test.mapper)
    model.train()
    with torch.no_grad():
        for path in _val_images(coco_mini, 2):
            h, w = cv2.imread(path).shape[:2]
            x = mapper({"file_name": path, "height": h, "width": w, "image_id": 0})
            model.backbone(model.preprocess_image([x]).tensor)
    for m in norms:
        m.momentum = 0.1
    out = tmp_path_factory.mktemp("mask_rcnn")
    DetectionCheckpointer(model.eval(), save_dir=str(out)).save("model_final")
    return out / "model_final.pth"


def test_predict_tool_writes_masks_of_a_mask_rcnn(mask_rcnn_checkpoint, coco_mini, tmp_path):
    from pycocotools import mask as mask_util

    src = _val_images(coco_mini, 1)[0]
    out = tmp_path / "out"
    _predict(["--config-file", SF_MASK_COCO_MINI, "--weights", str(mask_rcnn_checkpoint),
              "--input", src, "--output", str(out), "--vis-threshold", "0",
              "--device", "cpu"], tmp_path)
    img = cv2.imread(src)
    with open(out / "detections.json") as f:
        dets = json.load(f)
    # the same detections and masks the LazyConfig model gives in this process
    lazy = LazyPredictor(load_config(SF_MASK_COCO_MINI, ["train.device=cpu"]),
                         str(mask_rcnn_checkpoint))
    inst = lazy(utils.read_image(src, format="BGR"))["instances"]
    assert len(dets) == len(inst) > 5 and inst.has("pred_masks")
    assert int(inst.pred_masks.any(dim=(1, 2)).sum()) > 5  # masks with pixels
    for det, mask in zip(dets, inst.pred_masks):
        rle = det["segmentation"]
        assert isinstance(rle["counts"], str) and rle["size"] == list(img.shape[:2])
        decoded = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert decoded.shape == img.shape[:2] and np.array_equal(decoded.astype(bool),
                                                                 mask.numpy())
    # the masks are drawn: the PNG differs from a drawing of the boxes alone
    png = cv2.imread(str(out / (os.path.splitext(os.path.basename(src))[0] + ".png")))
    assert png.shape == img.shape
    from detectron2.utils.visualizer import Visualizer
    boxes_only = inst[inst.scores >= 0]
    boxes_only.remove("pred_masks")
    vis = Visualizer(img[:, :, ::-1], lazy.metadata).draw_instance_predictions(boxes_only)
    assert not np.array_equal(png, vis.get_image()[:, :, ::-1])
    # COCO can read the file back as segm results
    gt = COCO(os.path.join(coco_mini, "annotations", "instances_val2017.json"))
    res = gt.loadRes(str(out / "detections.json"))
    assert len(res.getAnnIds()) == len(dets)


# -- unreadable inputs and checkpoints that do not fit the config ---------------------------

SF_DEMO = os.path.join(REPO, "configs", "shapes", "sampling_free_root_resnet18_fpn_demo.py")
# what the 3-class demo checkpoint leaves unloaded in the 80-class coco_mini model
DEMO_IN_COCO = ["head.cls_score.weight (27, 64, 3, 3) vs (720, 64, 3, 3)",
                "head.cls_score.bias (27,) vs (720,)", "prior_state.class_counts (3,) vs (80,)",
                "prior_state.score_thresholds (3,) vs (80,)"]


@pytest.fixture(scope="module")
def random_checkpoints(tmp_path_factory):
    """Random-weight Sampling-Free RetinaNets as checkpoints: {"coco": the coco_mini
    config's (80 classes), "demo": the shapes demo's (3 classes; otherwise the same
    architecture, so only the class-dependent tensors differ)}."""
    from detectron2.checkpoint import DetectionCheckpointer

    from scratchdet.engine import build_model

    out = tmp_path_factory.mktemp("random_checkpoints")
    paths = {}
    for name, config in [("coco", SF_COCO_MINI), ("demo", SF_DEMO)]:
        torch.manual_seed(0)
        model = build_model(load_config(config, ["train.device=cpu"]))
        DetectionCheckpointer(model, save_dir=str(out)).save(name)
        paths[name] = str(out / f"{name}.pth")
    return paths


def _images_and_a_text_file(coco_mini, folder):
    """Two coco_mini val images and a text file named x.jpg in ``folder``."""
    folder.mkdir()
    for p in _val_images(coco_mini, 2):
        shutil.copy(p, folder)
    (folder / "x.jpg").write_text("not an image\n")
    return folder


def test_predict_tool_skips_an_unreadable_image_and_predicts_the_others(
        random_checkpoints, coco_mini, tmp_path):
    images = _images_and_a_text_file(coco_mini, tmp_path / "images")
    out = tmp_path / "out"
    thresh = "model.test_score_thresh=0.0"  # random weights: every score is low
    p = _predict(["--config-file", SF_COCO_MINI, "--weights", random_checkpoints["coco"],
                  "--input", str(images), "--output", str(out), "--device", "cpu", thresh],
                 tmp_path, status=3)
    bad = str(images / "x.jpg")
    assert f"skipping {bad}: it cannot be read as an image (UnidentifiedImageError" in p.stdout
    assert "1 input(s) skipped" in p.stderr and bad in p.stderr
    gt = COCO(os.path.join(coco_mini, "annotations", "instances_val2017.json"))
    by_name = {im["file_name"]: im for im in gt.loadImgs(gt.getImgIds())}
    good = [os.path.basename(q) for q in _val_images(coco_mini, 2)]
    with open(out / "images.json") as f:
        listed = json.load(f)
    assert listed["images"] == [{k: by_name[n][k] for k in ("id", "file_name", "height", "width")}
                                for n in good]
    (skipped,) = listed["skipped"]
    assert skipped["file_name"] == "x.jpg" and skipped["path"] == bad
    assert skipped["reason"].startswith("UnidentifiedImageError")
    assert sorted(os.listdir(out)) == sorted(
        ["detections.json", "images.json"] + [n[:-4] + ".png" for n in good])
    # the two images' detections, as the predictor gives them in this process
    with open(out / "detections.json") as f:
        dets = json.load(f)
    pred = build_predictor(SF_COCO_MINI, random_checkpoints["coco"], [thresh], device="cpu")
    for n in good:
        inst = pred(utils.read_image(str(images / n), format="BGR"))["instances"]
        mine = [d for d in dets if d["image_id"] == by_name[n]["id"]]
        assert len(mine) == len(inst) == 100  # max_detections_per_image
        assert [d["score"] for d in mine] == pytest.approx(inst.scores.tolist(), rel=1e-4)
    assert len(dets) == 200


def test_predict_tool_strict_fails_on_the_bad_file_before_writing(
        random_checkpoints, coco_mini, tmp_path):
    images = _images_and_a_text_file(coco_mini, tmp_path / "images")
    out = tmp_path / "out"
    out.mkdir()
    (out / "detections.json").write_text("[]")  # an earlier run's result stays as it was
    p = _predict(["--config-file", SF_COCO_MINI, "--weights", random_checkpoints["coco"],
                  "--input", str(images), "--output", str(out), "--device", "cpu", "--strict"],
                 tmp_path, status=1)
    assert f"--strict: input {str(images / 'x.jpg')!r} cannot be read" in p.stderr
    assert "UnidentifiedImageError" in p.stderr and "Traceback" not in p.stderr
    assert os.listdir(out) == ["detections.json"] and (out / "detections.json").read_text() == "[]"


@pytest.mark.parametrize("config", [SF_COCO_MINI, SF_COCO_MINI_YAML])
def test_predictor_refuses_a_checkpoint_of_another_class_count(config, random_checkpoints):
    from scratchdet.engine.checkpoint import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError) as e:
        build_predictor(config, random_checkpoints["demo"], device="cpu")
    msg = str(e.value)
    assert random_checkpoints["demo"] in msg and "4 of another shape (checkpoint vs model)" in msg
    for needle in DEMO_IN_COCO:
        assert needle in msg, (needle, msg)
    assert "missing from the checkpoint" not in msg  # only the shapes differ


def test_predict_tool_refuses_a_checkpoint_of_another_class_count(
        random_checkpoints, coco_mini, tmp_path):
    out = tmp_path / "out"
    p = _predict(["--config-file", SF_COCO_MINI, "--weights", random_checkpoints["demo"],
                  "--input", _val_images(coco_mini, 1)[0], "--output", str(out),
                  "--device", "cpu"], tmp_path, status=1)
    assert "does not fit the model built from the config" in p.stderr
    for needle in DEMO_IN_COCO:
        assert needle in p.stderr
    assert not out.exists()


@pytest.mark.parametrize("yacs", [False, True])
def test_eval_only_refuses_a_checkpoint_of_another_class_count(yacs, random_checkpoints,
                                                               tmp_path):
    out = tmp_path / "eval"
    weights = random_checkpoints["demo"]
    if yacs:
        args = [SF_COCO_MINI_YAML, "--eval-only", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(out)]
    else:
        args = [SF_COCO_MINI, "--eval-only", f"train.init_checkpoint={weights}",
                f"train.output_dir={out}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(REPO, "train_net.py"), "--config-file"]
                       + args, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode != 0
    assert "CheckpointMismatchError" in p.stderr and weights in p.stderr
    for needle in DEMO_IN_COCO:
        assert needle in p.stderr, p.stderr[-3000:]
    assert "Evaluation results" not in p.stdout + p.stderr  # it stopped before evaluating
    assert not [f for f in os.listdir(out) if f.endswith(".json") or f == "inference"]


def _save_state(state, path):
    torch.save({"model": state}, path)
    return str(path)


def test_load_fitting_checkpoint_accepts_what_fits_and_names_what_is_missing(
        random_checkpoints, sf_coco_mini_run, tmp_path):
    from scratchdet.engine import build_model
    from scratchdet.engine.checkpoint import (AtomicCheckpointer, CheckpointMismatchError,
                                              load_fitting_checkpoint)

    model = build_model(load_config(SF_COCO_MINI, ["train.device=cpu"]))
    # a checkpoint train_net.py wrote (buffers of the prior included) loads completely
    ckpt = AtomicCheckpointer(model)
    ckpt.load(str(sf_coco_mini_run / "model_final.pth"))
    assert ckpt.incompatible == ([], [], [])
    extra = load_fitting_checkpoint(model, str(sf_coco_mini_run / "model_final.pth"))
    assert extra["iteration"] == 3  # the checkpoint's other contents, as Checkpointer.load
    state = torch.load(random_checkpoints["coco"], map_location="cpu", weights_only=False)["model"]
    # keys only the checkpoint has are unused, not a mismatch (pixel_mean/pixel_std are
    # not in the state: the config sets them)
    assert not any(k.startswith("pixel_") for k in model.state_dict())
    fits = dict(state, **{"extra.weight": torch.zeros(2)})
    load_fitting_checkpoint(model, _save_state(fits, tmp_path / "fits.pth"))
    torch.testing.assert_close(model.head.cls_score.weight, state["head.cls_score.weight"])
    # a key of the model that the checkpoint lacks is named
    lacking = {k: v for k, v in state.items() if k != "backbone.fpn_output2.weight"}
    with pytest.raises(CheckpointMismatchError) as e:
        load_fitting_checkpoint(model, _save_state(lacking, tmp_path / "lacking.pth"))
    assert "1 missing from the checkpoint: backbone.fpn_output2.weight." in str(e.value)
    assert "of another shape" not in str(e.value)
    with pytest.raises(ValueError, match="no checkpoint given"):  # random weights otherwise
        load_fitting_checkpoint(model, "")
