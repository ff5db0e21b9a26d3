"""Sampling-Free Cascade R-CNN: no sampling at any stage, guided scaling per stage, the RPN
prior, the last stage's one-pass floor, empty images and batches, a mask head.

All on the shapes config (narrow Root-ResNet-18-FPN, 160 px images) with one thread."""
import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.evaluation import DatasetEvaluator
from detectron2.layers import ShapeSpec
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import (
    CascadeROIHeads,
    FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead,
)
from detectron2.structures import BitMasks, Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from scratchdet.engine import load_config
from scratchdet.evaluation import (
    build_threshold_comparison,
    detection_head,
    filter_by_score,
    score_floor,
)
from scratchdet.sampling_free import (
    AnchorCounter,
    SamplingFreeCascadeROIHeads,
    SamplingFreeFastRCNNOutputLayers,
    count_dataset,
    initialize_priors,
    prior_heads,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SF_CASCADE = os.path.join(REPO, "configs", "shapes",
                          "sampling_free_cascade_rcnn_root_resnet18_fpn_demo.py")
STAGES = 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sf_cascade():
    """(cfg, model with its RPN prior counted on the shapes val split, the counts)."""
    cfg = load_config(SF_CASCADE)
    cfg.dataloader.train.dataset.names = "scratchdet_shapes_val"
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    counts = initialize_priors(cfg, model, progress=False)
    return cfg, model, counts


def _train_inputs(n=1):
    """The first ``n`` shapes val images with at least two objects, as the train mapper
    gives them (no flip, so the input is the annotated image)."""
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    dicts = [d for d in DatasetCatalog.get("scratchdet_shapes_val") if len(d["annotations"]) >= 2]
    return [mapper(dict(d)) for d in dicts[:n]]


def _empty_like(x):
    h, w = x["image"].shape[1:]
    empty = Instances((h, w), gt_boxes=Boxes(torch.zeros(0, 4)),
                      gt_classes=torch.zeros(0, dtype=torch.int64))
    return dict(image=x["image"], instances=empty)


class _Recorder:
    """Records what reaches each stage's loss, what the RPN proposes and the boxes each
    later stage is built from."""

    def __init__(self, model, monkeypatch):
        self.stage, self.rpn, self.created = {}, None, []
        roi, rpn = model.roi_heads, model.proposal_generator
        for k, bp in enumerate(roi.box_predictor):
            def losses(predictions, proposals, _k=k, _bp=bp, _orig=bp.losses):
                self.stage[_k] = (predictions, [p[:] for p in proposals], _bp)
                return _orig(predictions, proposals)
            monkeypatch.setattr(bp, "losses", losses)

        def rpn_forward(*args, _orig=rpn.forward, **kwargs):
            proposals, losses = _orig(*args, **kwargs)
            self.rpn = [p.proposal_boxes.tensor.clone() for p in proposals]
            return proposals, losses
        monkeypatch.setattr(rpn, "forward", rpn_forward)

        def create(boxes, image_sizes, _orig=roi._create_proposals_from_boxes):
            out = _orig(boxes, image_sizes)
            self.created.append(([len(b) for b in boxes], out))
            return out
        monkeypatch.setattr(roi, "_create_proposals_from_boxes", create)


def _expected_classes(matcher, gt, boxes, num_classes):
    """(R,) class (num_classes: background, -1: ignored) of ``boxes`` matched to ``gt``."""
    if len(gt) == 0:
        return torch.full((len(boxes),), num_classes, dtype=torch.int64)
    idx, labels = matcher(pairwise_iou(gt.gt_boxes, Boxes(boxes)))
    cls = gt.gt_classes[idx].clone()
    cls[labels == 0] = num_classes
    cls[labels == -1] = -1
    return cls


def test_every_labelled_proposal_reaches_every_stage_and_cls_is_twice_box(sf_cascade,
                                                                           monkeypatch):
    """Stage 0: the RPN's proposals and the ground truth, all of them, labelled by matcher
    0 (Detectron2 would sample 32 per image); stage k > 0: stage k-1's regressed boxes
    of all those, the empty ones dropped, labelled by matcher k. Each stage's cls loss is
    2.0 x its box loss, the unscaled CE is logged, the box loss is Detectron2's times
    (proposals / (32 per image))."""
    _, model, _ = sf_cascade
    model.train()
    full = _train_inputs(1)[0]
    batch = [full, _empty_like(full)]  # an empty image in the batch trains on background
    rec = _Recorder(model, monkeypatch)
    with EventStorage(0) as storage:
        losses = model(batch)
        assert set(losses) >= {f"loss_{n}_stage{k}" for n in ("cls", "box_reg")
                               for k in range(STAGES)}
        roi = model.roi_heads
        gts = [x["instances"] for x in batch]
        counts = []
        for k in range(STAGES):
            predictions, proposals, bp = rec.stage[k]
            if k == 0:
                # every proposal, ground truth appended, in order; none ignored here
                for p, rpn_boxes, gt in zip(proposals, rec.rpn, gts):
                    want = torch.cat([rpn_boxes, gt.gt_boxes.tensor])
                    assert torch.equal(p.proposal_boxes.tensor, want)
            else:
                given, created = rec.created[k - 1]
                # every proposal of the previous stage gave a box; only empty ones dropped
                assert given == [len(p) for p in rec.stage[k - 1][1]]
                for p, c in zip(proposals, created):
                    assert torch.equal(p.proposal_boxes.tensor, c.proposal_boxes.tensor)
                    assert len(p) == int(c.proposal_boxes.nonempty().sum())
                assert sum(len(p) for p in proposals) >= 0.95 * sum(given)
            for p, gt in zip(proposals, gts):
                want = _expected_classes(roi.proposal_matchers[k], gt,
                                         p.proposal_boxes.tensor, roi.num_classes)
                assert torch.equal(p.gt_classes, want)
            n = sum(len(p) for p in proposals)
            counts.append(n)
            per_image = roi.batch_size_per_image  # what Detectron2 samples, 32
            assert n > 2 * per_image * 2
            # guided scaling: cls = 2.0 x box; the logged unscaled value is the plain CE
            cls, box = losses[f"loss_cls_stage{k}"], losses[f"loss_box_reg_stage{k}"]
            assert box > 0 and cls.item() == pytest.approx(2.0 * box.item(), rel=1e-5)
            gt_classes = torch.cat([p.gt_classes for p in proposals])
            plain = F.cross_entropy(predictions[0], gt_classes)
            logged = storage.history(f"stage{k}/loss_cls_unscaled").latest()
            assert logged == pytest.approx(plain.item(), rel=1e-5)
            # the box loss per foreground coordinate: Detectron2's (sum / n) x n / (4 fg)
            stock = FastRCNNOutputLayers.losses(bp, predictions, proposals)["loss_box_reg"]
            fg = int(((gt_classes >= 0) & (gt_classes < roi.num_classes)).sum())
            assert fg > 0
            assert box.item() == pytest.approx(stock.item() * n / (4 * fg), rel=1e-5)
    # with one image and its empty twin: stage 0 holds R_1 + G + R_2 proposals
    assert counts[0] == sum(len(b) for b in rec.rpn) + len(gts[0])
    print("proposals in each stage's loss:", counts)


def test_ignored_proposals_are_left_out_of_stage_0(sf_cascade, monkeypatch):
    """With an ignore band in stage 0's matcher, exactly the ignored proposals are left
    out: all proposals + ground truth - ignored."""
    _, model, _ = sf_cascade
    model.train()
    batch = _train_inputs(2)
    roi = model.roi_heads
    monkeypatch.setattr(roi, "proposal_matcher", Matcher([0.3, 0.5], [0, -1, 1], False))
    rec = _Recorder(model, monkeypatch)
    with EventStorage(0):
        model(batch)
    _, proposals, _ = rec.stage[0]
    ignored = 0
    for p, rpn_boxes, x in zip(proposals, rec.rpn, batch):
        gt = x["instances"]
        every = torch.cat([rpn_boxes, gt.gt_boxes.tensor])
        cls = _expected_classes(roi.proposal_matcher, gt, every, roi.num_classes)
        assert torch.equal(p.proposal_boxes.tensor, every[cls >= 0])
        assert torch.equal(p.gt_classes, cls[cls >= 0])
        ignored += int((cls < 0).sum())
    assert ignored > 0


def test_rpn_prior_is_the_exact_count(sf_cascade):
    """The cascade's only prior head is its RPN; initialize_priors set its prior (and the
    objectness bias) to the anchor counter's count, which equals the RPN's own anchor
    labels over the training images."""
    cfg, model, counts = sf_cascade
    (name, gen, matcher, head_classes, owner), = prior_heads(model)
    assert name == "rpn" and owner is model.proposal_generator and head_classes == 1
    c = counts["rpn"]
    assert owner.prior_state.prior.item() == c.prior
    bias = owner.rpn_head.objectness_logits.bias.double()
    torch.testing.assert_close(torch.sigmoid(bias), torch.full_like(bias, c.prior))
    dicts = instantiate(cfg.dataloader.train.dataset)  # empty images filtered, as trained
    counter = AnchorCounter(gen, matcher, 3, model.backbone.size_divisibility)
    again = count_dataset(dicts, counter, [], 1, progress=False)
    assert (again.num_foreground, again.num_valid) == (c.num_foreground, c.num_valid)
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    fg = valid = 0
    for d in dicts:
        inst = mapper(dict(d))["instances"]
        grids = counter.grid_sizes(*inst.image_size)
        anchors = gen([torch.zeros(1, 1, h, w) for h, w in grids])
        with torch.no_grad():
            labels = owner.label_and_sample_anchors(anchors, [inst])[0][0]
        fg += int((labels == 1).sum())
        valid += int((labels != -1).sum())
    assert (fg, valid) == (c.num_foreground, c.num_valid) and fg > 0


def _eval_ready(model, inputs):
    """A copy of ``model`` in eval mode with BN statistics of ``inputs`` and spread-out
    class scores, so that thresholds between 1e-4 and 1 decide what is kept."""
    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative: one batch gives its exact statistics
    model.train()
    with torch.no_grad():
        model.backbone(model.preprocess_image(inputs).tensor)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bp in model.roi_heads.box_predictor:
            bp.cls_score.weight.copy_(torch.randn(bp.cls_score.weight.shape, generator=g) * 0.3)
    return model.eval()


class _Null(DatasetEvaluator):
    pass


def test_last_stage_threshold_and_one_pass_floor(sf_cascade):
    """The last stage's predictor is the detection head: its threshold alone filters the
    final detections, and score_floor at 1e-4 then filtered at t equals a pass at t."""
    cfg, model, _ = sf_cascade
    inputs = [dict(image=x["image"], height=160, width=160) for x in _train_inputs(2)]
    model = _eval_ready(model, inputs)
    stages = model.roi_heads.box_predictor
    assert detection_head(model) is stages[-1]
    assert [bp.test_score_thresh for bp in stages] == [1e-4] * STAGES
    comparison = build_threshold_comparison(model, lambda primary: _Null())
    assert comparison.floor().tolist() == pytest.approx([1e-4] * 3)
    assert sorted(comparison.thresholds) == ["0.05", "model"]
    with torch.no_grad():
        with score_floor(model, torch.full((3,), 1e-4)):
            floor = [o["instances"] for o in model(inputs)]
        scores = torch.cat([f.scores for f in floor])
        assert len(scores) > 20
        for t in (float(scores.quantile(0.3)), float(scores.quantile(0.7))):
            for bp in stages[:-1]:  # the earlier stages' thresholds play no part
                bp.test_score_thresh = 0.99
            stages[-1].test_score_thresh = t
            try:
                direct = [o["instances"] for o in model(inputs)]
            finally:
                for bp in stages:
                    bp.test_score_thresh = 1e-4
            assert 0 < sum(len(d) for d in direct) < len(scores)
            for f, d in zip(floor, direct):
                kept = filter_by_score(f, torch.full((3,), t))
                assert len(d) == len(kept)
                assert torch.equal(d.pred_classes, kept.pred_classes)
                assert torch.equal(d.scores, kept.scores)
                assert torch.equal(d.pred_boxes.tensor, kept.pred_boxes.tensor)


def test_inference_is_detectron2_s_cascade_inference(sf_cascade):
    """Away from the NMS threshold's rounding edge, the exact NMS of the last predictor
    gives Detectron2's CascadeROIHeads detections (the same module's own method)."""
    _, model, _ = sf_cascade
    inputs = [dict(image=x["image"], height=160, width=160) for x in _train_inputs(2)]
    model = _eval_ready(model, inputs)
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features)
        ours = model.roi_heads._forward_box(features, proposals)
        d2 = CascadeROIHeads._forward_box(model.roi_heads, features, proposals)
    assert sum(len(d) for d in d2) > 20
    for a, b in zip(ours, d2):
        assert torch.equal(a.pred_classes, b.pred_classes) and torch.equal(a.scores, b.scores)
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_empty_images_and_all_empty_batch_train(sf_cascade):
    _, model, _ = sf_cascade
    model.train()
    full = _train_inputs(1)[0]
    empty = _empty_like(full)
    for batch in ([full, empty], [empty, empty]):
        model.zero_grad()
        with EventStorage(0):
            losses = model(batch)
            sum(losses.values()).backward()
        assert all(torch.isfinite(v) for v in losses.values()), losses
        assert {f"loss_cls_stage{k}" for k in range(STAGES)} <= set(losses)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    # the all-empty batch still trains every stage's classifier on background
    for bp in model.roi_heads.box_predictor:
        assert bp.cls_score.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_stock_predictors_are_refused(sf_cascade):
    model_cfg = copy.deepcopy(sf_cascade[0].model)
    assert model_cfg.roi_heads._target_ is SamplingFreeCascadeROIHeads
    assert all(bp._target_ is SamplingFreeFastRCNNOutputLayers
               for bp in model_cfg.roi_heads.box_predictors)
    stock = model_cfg.roi_heads.box_predictors[1]
    stock._target_ = FastRCNNOutputLayers
    stock.pop("guided_loss_scale")
    with pytest.raises(TypeError, match=r"stages \[1\]"):
        instantiate(model_cfg)


def test_mask_head_trains_on_the_stage_0_foreground(sf_cascade, monkeypatch):
    """A mask head on the cascade (Detectron2's, unchanged) trains on the foreground of
    the unsampled stage-0 proposals: every one of them, and only them."""
    model_cfg = copy.deepcopy(sf_cascade[0].model)
    roi = model_cfg.roi_heads
    roi.mask_in_features = ["p2", "p3", "p4", "p5"]
    roi.mask_pooler = L(ROIPooler)(output_size=14, scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32),
                                   sampling_ratio=0, pooler_type="ROIAlignV2")
    roi.mask_head = L(MaskRCNNConvUpsampleHead)(
        input_shape=ShapeSpec(channels=64, width=14, height=14), num_classes=3,
        conv_dims=[64, 64])
    torch.manual_seed(0)
    model = instantiate(model_cfg).train()
    model.proposal_generator.set_prior(sf_cascade[2]["rpn"])
    batch = _train_inputs(2)
    for x in batch:  # box-shaped masks: the shapes data has none
        inst = x["instances"]
        m = torch.zeros(len(inst), *inst.image_size, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(inst.gt_boxes.tensor.round().long().tolist()):
            m[i, y0:y1, x0:x1] = True
        inst.gt_masks = BitMasks(m)
    rec = _Recorder(model, monkeypatch)
    seen = []
    head = model.roi_heads.mask_head

    def mask_forward(x, instances, _orig=head.forward):
        seen.append([i.gt_classes.clone() for i in instances])
        return _orig(x, instances)
    monkeypatch.setattr(head, "forward", mask_forward)
    with EventStorage(0):
        losses = model(batch)
        sum(losses.values()).backward()
    assert torch.isfinite(losses["loss_mask"]) and losses["loss_mask"] > 0
    _, stage0, _ = rec.stage[0]
    (classes,) = seen
    for c, p in zip(classes, stage0):
        assert torch.equal(c, p.gt_classes[p.gt_classes < 3]) and len(c) > 0
    assert head.predictor.weight.grad.abs().sum() > 0
