"""Sampling-Free Mask R-CNN on the shapes data (exact polygon masks): which proposals each
head trains on, guided scaling with the mask loss present, empty images, and ``segm``
next to ``bbox`` at both score thresholds of the evaluation."""
import json
import os

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from scratchdet.data import ShapesSpec
from scratchdet.data.shapes import register_shapes
from scratchdet.engine import do_test, load_config
from scratchdet.engine.lazy_train import RESULTS_FILE
from scratchdet.evaluation import ThresholdComparisonEvaluator
from scratchdet.sampling_free import SamplingFreeROIHeads
from scratchdet.sampling_free.prior import PriorCounts

from conftest import REPO

SHAPES = os.path.join(REPO, "configs", "shapes")
SF_MASK = os.path.join(SHAPES, "sampling_free_mask_rcnn_root_resnet18_fpn_demo.py")
STOCK_MASK = os.path.join(SHAPES, "mask_rcnn_root_resnet18_fpn_demo.py")
TINY = "scratchdet_shapes_tiny_masks"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_split():
    """Six shapes images (one of them empty, as the spec's seed draws it) with masks."""
    if TINY not in DatasetCatalog.list():
        register_shapes(TINY, ShapesSpec(num_images=6, seed=11))
    dicts = DatasetCatalog.get(TINY)
    assert any(not d["annotations"] for d in dicts) and any(d["annotations"] for d in dicts)
    return dicts


def _model(path, tiny_split):
    cfg = load_config(path, ["train.device=cpu"])
    cfg.dataloader.train.dataset.names = TINY
    cfg.dataloader.test.dataset.names = TINY
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    if hasattr(model.proposal_generator, "set_prior"):  # as counted before training
        model.proposal_generator.set_prior(PriorCounts(
            num_classes=1, num_foreground=30, num_valid=10000, per_class=[30],
            num_images=10, stderr=1e-4))
    return cfg, model


def _batch(cfg, dicts):
    mapper = instantiate(cfg.dataloader.train.mapper)
    return [mapper(dict(d)) for d in dicts]


class _Recorder:
    """Counts what the ROI heads' sub-modules train on in one forward."""

    def __init__(self, model):
        roi = model.roi_heads
        self.proposals_in, self.labelled, self.box_rows, self.mask_rows = [], [], [], []
        label = roi.label_and_sample_proposals

        def label_and_record(proposals, targets):
            self.proposals_in = [len(p) + len(t) for p, t in zip(proposals, targets)]
            out = label(proposals, targets)
            self.labelled = [p.gt_classes.clone() for p in out]
            return out

        roi.label_and_sample_proposals = label_and_record
        roi.box_head.register_forward_hook(
            lambda m, args, out: self.box_rows.append(out.shape[0]))
        roi.mask_head.register_forward_pre_hook(
            lambda m, args: self.mask_rows.append(
                (args[0].shape[0], [i.gt_classes.clone() for i in args[1]])))


def test_mask_head_trains_on_foreground_box_head_on_every_labelled_proposal(tiny_split):
    dicts = [d for d in tiny_split if d["annotations"]][:2]
    for path in (SF_MASK, STOCK_MASK):
        cfg, model = _model(path, tiny_split)
        rec = _Recorder(model)
        with EventStorage(0):
            losses = model(_batch(cfg, dicts))
        num_classes = model.roi_heads.num_classes
        labelled = torch.cat(rec.labelled)
        (mask_rows, mask_classes), = rec.mask_rows
        fg = int(((labelled >= 0) & (labelled < num_classes)).sum())
        # the mask head: the foreground of the proposals the box head was given
        assert mask_rows == fg == sum(len(c) for c in mask_classes) > 0
        assert bool((torch.cat(mask_classes) < num_classes).all())
        assert rec.box_rows == [len(labelled)]
        if path == SF_MASK:
            assert isinstance(model.roi_heads, SamplingFreeROIHeads)
            # every proposal (ground truth appended) is labelled: nothing sampled away
            assert [len(c) for c in rec.labelled] == rec.proposals_in
            assert len(labelled) > 2 * 128  # more than the stock head samples
            # guided scaling with the mask head present; the mask loss is Detectron2's
            assert losses["loss_cls"].item() == pytest.approx(
                2.0 * losses["loss_box_reg"].item(), rel=1e-4)
            assert losses["loss_rpn_cls"].item() == pytest.approx(
                losses["loss_rpn_loc"].item(), rel=1e-4)
        else:  # stock: 128 sampled per image, at most a quarter foreground
            assert [len(c) for c in rec.labelled] == [128, 128]
        assert 0.3 < losses["loss_mask"].item() < 1.5  # BCE of an untrained mask head
        assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("which", ["mixed", "all_empty"])
def test_empty_images_and_batches_train(which, tiny_split):
    empty = [d for d in tiny_split if not d["annotations"]]
    full = [d for d in tiny_split if d["annotations"]]
    dicts = [empty[0], full[0]] if which == "mixed" else [empty[0], empty[0]]
    cfg, model = _model(SF_MASK, tiny_split)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with EventStorage(0):
        losses = model(_batch(cfg, dicts))
        total = sum(losses.values())
        total.backward()
        opt.step()
    assert {"loss_mask", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= \
        set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    if which == "all_empty":  # no foreground: no box or mask target, a zero mask loss
        assert losses["loss_mask"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0
        assert losses["loss_cls"].item() == 0.0  # guided to 2.0 x a zero box loss
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _gt_instances(d, score_of):
    """The ground truth of dataset dict ``d`` as detections with polygon-rasterised masks;
    ``score_of(j)`` scores the j-th object."""
    h, w = d["height"], d["width"]
    inst = Instances((h, w))
    anns = d["annotations"]
    inst.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
                            .reshape(-1, 4))
    inst.pred_boxes.tensor[:, 2:] += inst.pred_boxes.tensor[:, :2]  # XYWH -> XYXY
    inst.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
    inst.scores = torch.tensor([score_of(j) for j in range(len(anns))], dtype=torch.float32)
    masks = [mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w)))
             for a in anns]
    inst.pred_masks = BitMasks(torch.from_numpy(np.array(masks, dtype=bool).reshape(-1, h, w))
                               ).tensor
    return inst


def test_threshold_comparison_scores_segm_at_both_thresholds(tiny_split, log):
    """Ground truth as detections, half of them scoring under 0.05: both tasks give AP
    100 at the low threshold and less at 0.05; the table has a row per task and setting."""
    thresholds = {"adaptive": torch.full((3,), 1e-4), "0.05": torch.full((3,), 0.05)}
    ev = ThresholdComparisonEvaluator(
        {k: COCOEvaluator(TINY, tasks=("bbox", "segm")) for k in thresholds}, thresholds,
        primary="adaptive")
    ev.reset()
    for d in tiny_split:
        inst = _gt_instances(d, lambda j: 0.9 if j % 2 == 0 else 0.01)
        ev.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    res = ev.evaluate()
    assert set(res) == {"bbox", "segm", "bbox@0.05", "segm@0.05"}
    for task in ("bbox", "segm"):
        assert res[task]["AP"] == pytest.approx(100.0)
        assert res[f"{task}@0.05"]["AP"] < 80
    rows = ev.last_table.splitlines()[2:]
    assert len(rows) == 4 and "bbox" in rows[0] and "adaptive" in rows[0]
    assert "segm" in rows[2] and "100.000" in rows[2] and "segm" in rows[3]


def test_do_test_writes_segm_at_both_thresholds(tiny_split, tmp_path):
    cfg, model = _model(SF_MASK, tiny_split)
    cfg.train.output_dir = str(tmp_path)
    model.eval()
    with torch.no_grad():
        results = do_test(cfg, model, iteration=0)
    assert {"bbox", "segm", "bbox@0.05", "segm@0.05"} <= set(results)
    with open(tmp_path / RESULTS_FILE) as f:
        rec = json.load(f)
    assert {"bbox", "segm", "bbox@0.05", "segm@0.05"} <= set(rec["results"])
    # the R-CNN's own 1e-4 (no prior on the box head) next to the fixed 0.05
    assert rec["score_thresholds"]["model"]["values"] == pytest.approx([1e-4] * 3)
    assert MetadataCatalog.get(TINY).json_file.endswith("annotations.json")


def test_yacs_trainer_evaluates_segm_when_mask_on(tiny_split, tmp_path):
    from detectron2.config import get_cfg

    from scratchdet import add_scratchdet_config
    from scratchdet.engine.yacs_train import ScratchDetTrainer

    cfg = add_scratchdet_config(get_cfg())
    cfg.merge_from_file(SF_MASK[:-3] + ".yaml")
    cfg.OUTPUT_DIR = str(tmp_path)
    assert cfg.MODEL.MASK_ON
    assert ScratchDetTrainer.build_evaluator(cfg, TINY)._tasks == ("bbox", "segm")
    cfg.MODEL.MASK_ON = False
    assert ScratchDetTrainer.build_evaluator(cfg, TINY)._tasks == ("bbox",)
