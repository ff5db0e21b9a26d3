"""The adaptive-threshold evaluation: one inference pass scored at several thresholds,
the trainer hook, and train_net.py's evaluation outputs (real coco_mini data)."""
import glob
import json
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from detectron2.config import LazyCall as L
from detectron2.data import detection_utils as utils
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from scratchdet.engine import do_test, load_config
from scratchdet.engine.lazy_train import RESULTS_FILE
from scratchdet.engine.predictor import LazyPredictor
from scratchdet.evaluation import (
    AdaptiveThresholdEvalHook,
    apply_adaptive_thresholds,
    build_threshold_comparison,
    filter_by_score,
    inference_thresholds,
    score_floor,
)
from scratchdet.sampling_free.prior import PriorCounts

from conftest import REPO, SF_COCO_MINI


def _metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def sf_model(sf_coco_mini_run):
    """(cfg, predictor) for the trained Sampling-Free coco_mini checkpoint."""
    cfg = load_config(SF_COCO_MINI, ["train.device=cpu", f"train.output_dir={sf_coco_mini_run}"])
    return cfg, LazyPredictor(cfg, str(sf_coco_mini_run / "model_final.pth"))


def _val_images(coco_mini, n=3):
    return sorted(glob.glob(os.path.join(coco_mini, "val2017", "*.jpg")))[:n]


def _canonical(inst):
    """Detections in a fixed order: a barely trained model gives many equal scores,
    which NMS and top-k may order either way."""
    keys = torch.cat([inst.scores[:, None].double(), inst.pred_classes[:, None].double(),
                      inst.pred_boxes.tensor.double()], dim=1)
    order = sorted(range(len(inst)), key=lambda i: tuple(keys[i].tolist()))
    return inst[torch.as_tensor(order, dtype=torch.long)]


def _same(a, b):
    assert len(a) == len(b)
    a, b = _canonical(a), _canonical(b)
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert torch.allclose(a.scores, b.scores)
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_training_run_logs_thresholds_and_both_aps(sf_coco_mini_run):
    records = _metrics(sf_coco_mini_run)
    evals = [r for r in records if "bbox/AP" in r]
    assert evals, "no evaluation in metrics.json"
    last = evals[-1]
    assert "bbox@0.05/AP" in last and "bbox@0.05/AP50" in last
    with open(sf_coco_mini_run / RESULTS_FILE) as f:
        rec = json.load(f)
    # the adaptive threshold of the global rule is prior x C, logged next to the APs
    thr = last["score_threshold/adaptive"]
    prior = [r for r in records if "prior/retinanet" in r][0]["prior/retinanet"]
    assert thr == pytest.approx(prior * 80, rel=1e-5)
    assert 0 < thr < 0.05
    assert rec["iteration"] == last["iteration"]
    assert rec["score_thresholds"]["adaptive"]["values"][0] == pytest.approx(thr, rel=1e-6)
    assert rec["score_thresholds"]["0.05"]["values"] == [0.05] * 80
    assert set(rec["results"]) == {"bbox", "bbox@0.05"}


@pytest.mark.parametrize("per_class", [False, True])
def test_filtering_one_pass_equals_a_pass_at_the_higher_threshold(sf_model, coco_mini, per_class):
    """Score filtering commutes with top-k, NMS and the per-image cap: detections at a
    floor, filtered at a uniform threshold, are those of a pass at that threshold."""
    cfg, pred = sf_model
    model = pred.model
    for path in _val_images(coco_mini):
        img = utils.read_image(path, format="BGR")
        with score_floor(model, torch.zeros(80)):
            raw = pred(img)["instances"].to("cpu")
        # at floor 0 every anchor is a candidate: the top-k cap (1000 per level) is reached
        assert len(raw) > 20
        fixed = float(raw.scores.median())
        floor = torch.zeros(80)
        if per_class:  # floor below `fixed`, different per class
            floor = torch.linspace(0, fixed * 0.9, 80)
        with score_floor(model, floor):
            raw = pred(img)["instances"].to("cpu")
        with score_floor(model, torch.full((80,), fixed)):
            direct = pred(img)["instances"].to("cpu")
        filtered = filter_by_score(raw, torch.full((80,), fixed))
        assert 0 < len(direct) < len(raw)
        _same(filtered, direct)
        assert float(direct.scores.min()) > fixed


@pytest.mark.parametrize("width, shift", [(37.3, 10.829032258064514), (51.7, 15.00867741935484),
                                          (64.1, 18.609477419354835), (99.3, 28.82923225806451)])
def test_filtering_commutes_with_nms_at_the_rounding_edge(sf_model, width, shift):
    """Two class-79 boxes whose IoU is within 3e-5 of the NMS threshold, and a low-score
    box of class 0 far away. torchvision's batched_nms (Detectron2's) runs small inputs
    on class-offset coordinates, offset by the largest coordinate present, so it rounded
    the pair's IoU one way with the far box (the floor pass) and the other way without
    it (the pass at 0.05): the two disagreed on all four pairs. The Sampling-Free
    RetinaNet's NMS shifts classes by offsets fixed by the image size, whatever else is
    there (tests/test_nms.py tests that NMS alone)."""
    model = sf_model[1].model
    a = torch.tensor([[20.1, 30.2, 20.1 + width, 30.2 + 45.7]])
    boxes = torch.cat([a, a + torch.tensor([[shift, 0.0, shift, 0.0]]),
                       torch.tensor([[1000.0, 1200.0, 1300.0, 1330.0]])])
    scores = torch.full((3, 80), 1e-9)  # probabilities, as inference_single_image gets them
    scores[0, 79], scores[1, 79], scores[2, 0] = 0.5, 0.3, 0.01

    def detect(floor):
        with torch.no_grad(), score_floor(model, torch.full((80,), floor)):
            return model.inference_single_image(
                [Boxes(boxes)], [scores], [torch.zeros(3, 4)], (1333, 1333))

    raw, direct = detect(0.0), detect(0.05)
    assert len(raw) == 100  # every class of every box is a candidate at floor 0
    assert (direct.pred_classes == 79).all() and 1 <= len(direct) <= 2
    _same(filter_by_score(raw, torch.full((80,), 0.05)), direct)


class _RecordingCOCOEvaluator(COCOEvaluator):
    """COCOEvaluator that remembers the scores it was given."""

    seen = []

    def reset(self):
        super().reset()
        self.scores = []
        _RecordingCOCOEvaluator.seen.append(self)

    def process(self, inputs, outputs):
        for o in outputs:
            self.scores.append(o["instances"].scores.cpu())
        super().process(inputs, outputs)


def test_hook_sets_the_threshold_the_evaluator_sees(sf_model, coco_mini, tmp_path):
    cfg, pred = sf_model
    model = pred.model
    # a prior whose adaptive threshold (N_f / N) is the median raw score of a val image,
    # set the way a checkpoint carries it (the classification bias is not touched)
    img = utils.read_image(_val_images(coco_mini, 1)[0], format="BGR")
    with score_floor(model, torch.zeros(80)):
        raw = pred(img)["instances"].scores
    num_valid = 10 ** 9
    num_fg = int(float(raw.median()) * num_valid)
    counts = PriorCounts(num_classes=80, num_foreground=num_fg, num_valid=num_valid,
                         per_class=[num_fg // 2, num_fg - num_fg // 2] + [0] * 78, num_images=1)
    adaptive = num_fg / num_valid
    model.prior_state.set(counts)
    cfg.train.output_dir = str(tmp_path)
    cfg.dataloader.evaluator = L(_RecordingCOCOEvaluator)(dataset_name="coco_mini_val")
    _RecordingCOCOEvaluator.seen.clear()

    hook = AdaptiveThresholdEvalHook(0, lambda: do_test(cfg, model, iteration=7), model,
                                     rule="global")
    with EventStorage(7) as storage:
        hook.trainer = types.SimpleNamespace(iter=7, storage=storage)
        hook._do_eval()
        latest = {k: v[0] for k, v in storage.latest().items()}
    assert latest["score_threshold/adaptive"] == pytest.approx(adaptive, rel=1e-6)
    assert torch.allclose(inference_thresholds(model), torch.full((80,), adaptive))
    primary, fixed = _RecordingCOCOEvaluator.seen[-2:]
    prim = torch.cat(primary.scores)
    fix = torch.cat(fixed.scores)
    assert len(prim) > 0 and float(prim.min()) > adaptive
    assert bool((prim < 0.05).any())  # detections the fixed default would have dropped
    assert len(fix) == int((prim > 0.05).sum()) and bool((fix > 0.05).all())
    for k in ["AP", "AP50", "AP75", "APs", "APm", "APl"]:
        assert f"bbox/{k}" in latest and f"bbox@0.05/{k}" in latest
    assert not math.isnan(latest["bbox/AP"])  # there were detections to score

    # per-class rule: thresholds proportional to each class's foreground count
    thr = apply_adaptive_thresholds(model, "per_class")
    assert thr[0] == pytest.approx(adaptive * (num_fg // 2) / num_fg, rel=1e-5)
    assert float(thr[10]) == 0.0
    apply_adaptive_thresholds(model, "global")


def test_comparison_needs_no_second_setting_at_the_fixed_threshold(sf_model):
    cfg, pred = sf_model
    model = pred.model
    model.prior_state.set(PriorCounts(num_classes=80, num_foreground=5, num_valid=100,
                                      per_class=[5] + [0] * 79, num_images=1))
    ev = build_threshold_comparison(model, lambda primary: object(), fixed=0.05)
    assert list(ev.thresholds) == ["adaptive"]  # adaptive == fixed: one row
    model.prior_state.set(PriorCounts(num_classes=80, num_foreground=1, num_valid=100,
                                      per_class=[1] + [0] * 79, num_images=1))
    ev = build_threshold_comparison(model, lambda primary: object(), fixed=0.05)
    assert list(ev.thresholds) == ["adaptive", "0.05"]
    assert torch.allclose(ev.floor(), torch.full((80,), 0.01, dtype=torch.float64))


def test_eval_only_writes_coco_metrics_and_both_aps(low_threshold_checkpoint, tmp_path):
    out = tmp_path / "eval"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", SF_COCO_MINI,
         "--eval-only", f"train.init_checkpoint={low_threshold_checkpoint[0]}",
         f"train.output_dir={out}"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    log = p.stdout + p.stderr
    assert "AP at each score threshold" in log and "fixed (Detectron2 default)" in log
    with open(out / RESULTS_FILE) as f:
        rec = json.load(f)
    assert rec["checkpoint"] == str(low_threshold_checkpoint[0])
    bbox = rec["results"]["bbox"]
    for k in ["AP", "AP50", "AP75", "APs", "APm", "APl"]:
        assert k in bbox and k in rec["results"]["bbox@0.05"]
    assert not math.isnan(bbox["AP"])  # the checkpoint's threshold lets detections through
    assert "AP-person" in bbox and len([k for k in bbox if k.startswith("AP-")]) == 80
    assert rec["score_thresholds"]["adaptive"]["values"][0] == \
        pytest.approx(low_threshold_checkpoint[1], rel=1e-5)


def test_eval_only_refuses_a_missing_checkpoint(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    missing = tmp_path / "nope.pth"
    p = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", SF_COCO_MINI,
         "--eval-only", f"train.init_checkpoint={missing}", f"train.output_dir={tmp_path}"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and str(missing) in p.stderr
    assert not os.path.exists(tmp_path / RESULTS_FILE)


def _write_tiny_voc(root, class_names):
    """A VOC-layout directory: 4 images, two objects each (one per class)."""
    import cv2

    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    ids = [f"img{i}" for i in range(4)]
    for i, fid in enumerate(ids):
        cv2.imwrite(os.path.join(root, "JPEGImages", fid + ".jpg"),
                    np.full((120, 160, 3), 127, np.uint8))
        objs = "".join(
            f"<object><name>{c}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>0</difficult><bndbox><xmin>{x}</xmin>"
            f"<ymin>{20 + i}</ymin><xmax>{x + 40}</xmax><ymax>{70 + i}</ymax></bndbox></object>"
            for c, x in zip(class_names, (10, 90)))
        with open(os.path.join(root, "Annotations", fid + ".xml"), "w") as f:
            f.write(f"<annotation><filename>{fid}.jpg</filename><size><width>160</width>"
                    f"<height>120</height><depth>3</depth></size>{objs}</annotation>")
    with open(os.path.join(root, "ImageSets", "Main", "test.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")


def test_voc_configs_use_the_pascal_voc_evaluator_and_the_comparison_scores_it(tmp_path):
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_pascal_voc
    from detectron2.evaluation import PascalVOCDetectionEvaluator
    from detectron2.structures import Boxes, Instances

    from scratchdet.evaluation import ThresholdComparisonEvaluator

    for path in glob.glob(os.path.join(REPO, "configs", "VOC", "*.py")):
        cfg = load_config(path)
        assert cfg.dataloader.evaluator._target_ is PascalVOCDetectionEvaluator, path

    classes = ["circle", "square"]
    _write_tiny_voc(str(tmp_path), classes)
    register_pascal_voc("scratchdet_tiny_voc_test", str(tmp_path), "test", 2007, classes)
    dicts = DatasetCatalog.get("scratchdet_tiny_voc_test")
    thresholds = {"adaptive": torch.full((2,), 0.005), "0.05": torch.full((2,), 0.05)}
    ev = ThresholdComparisonEvaluator(
        {k: PascalVOCDetectionEvaluator("scratchdet_tiny_voc_test") for k in thresholds},
        thresholds, primary="adaptive")
    ev.reset()
    for i, d in enumerate(dicts):
        inst = Instances((d["height"], d["width"]))
        boxes = [a["bbox"] for a in d["annotations"]] + [[0.0, 0.0, 5.0, 5.0]]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]] + [0])
        # half of the objects score under 0.05, the false positive lowest of all
        inst.scores = torch.tensor([0.9 if i % 2 else 0.02, 0.9, 0.01])
        ev.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    res = ev.evaluate()
    assert set(res) == {"bbox", "bbox@0.05"}
    assert res["bbox"]["AP50"] == pytest.approx(100.0)
    # at 0.05 half the circles are lost: VOC07 11-point AP of recall 0.5 at precision 1
    assert res["bbox@0.05"]["AP50"] == pytest.approx((100 + 100 * 6 / 11) / 2, abs=0.01)
    rows = ev.last_table.splitlines()[2:]  # the side-by-side table: one row per threshold
    assert "adaptive" in rows[0] and "100.000" in rows[0] and "77.273" in rows[1]
