"""Property tests (hypothesis) of guided loss scaling and the Sampling-Free losses.

Over random logits, boxes and anchors, for the RetinaNet, the RPN and the ROI box head:

- the losses and their gradients are finite;
- the guided classification loss equals ``scale x`` the box loss, and its gradient is the
  plain cross-entropy gradient times the detached ratio (nothing flows into the box
  branch through the ratio);
- the result does not depend on the classification loss's magnitude (multiplying it by
  any k > 0 changes neither the value nor the gradient), nor on the image's scale
  (boxes and anchors x 2 or / 2 give the same labels and losses).
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectron2.config import instantiate
from fvcore.nn import smooth_l1_loss
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from scratchdet.engine import load_config
from scratchdet.sampling_free import guided_scale
from scratchdet.sampling_free.prior import PriorCounts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
SIZE = 128  # image side for the random boxes and anchors


# -- guided scaling on its own ----------------------------------------------------------
@SETTINGS
@given(logits=st.lists(st.floats(-60, 60), min_size=1, max_size=40),
       pos=st.floats(0, 1), reg=st.floats(1e-6, 1e3), scale=st.floats(0.01, 10),
       k=st.floats(1e-3, 1e3))
def test_guided_scale_value_gradient_and_magnitude_invariance(logits, pos, reg, scale, k):
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    target = (torch.arange(len(logits)) < round(pos * len(logits))).double()
    reg_t = torch.tensor(reg, dtype=torch.float64, requires_grad=True)
    plain = F.binary_cross_entropy_with_logits(x, target, reduction="sum")
    if not plain.item() > 0:  # perfectly classified: the loss stays zero
        assert guided_scale(plain, reg_t, scale).item() == 0
        return
    out = guided_scale(plain, reg_t, scale)
    assert math.isfinite(out.item())
    assert out.item() == pytest.approx(scale * reg, rel=1e-9)
    gx, greg = torch.autograd.grad(out, (x, reg_t), allow_unused=True, retain_graph=True)
    g_plain, = torch.autograd.grad(plain, x)
    ratio = scale * reg / plain.item()
    assert torch.isfinite(gx).all()
    assert torch.allclose(gx, g_plain * ratio, rtol=1e-9, atol=1e-300)
    assert greg is None  # the ratio is detached: no gradient into the box loss
    # any magnitude of the classification loss gives the same value and gradient
    scaled = guided_scale(k * F.binary_cross_entropy_with_logits(x, target, reduction="sum"),
                          reg_t, scale)
    gk, = torch.autograd.grad(scaled, x)
    assert scaled.item() == pytest.approx(out.item(), rel=1e-9)
    assert torch.allclose(gk, gx, rtol=1e-7, atol=1e-300)


# -- random boxes and anchors -------------------------------------------------------------
def _boxes(draw, n, min_side=2.0):
    out = []
    for _ in range(n):
        x0 = draw(st.floats(0, SIZE - min_side))
        y0 = draw(st.floats(0, SIZE - min_side))
        w = draw(st.floats(min_side, SIZE - x0))
        h = draw(st.floats(min_side, SIZE - y0))
        out.append([x0, y0, x0 + w, y0 + h])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


@st.composite
def scenes(draw, num_classes):
    """(anchors (R, 4), per image: gt boxes (G, 4) and classes (G,), and a seed for the
    network outputs). Anchors include boxes near the gt so that positives occur."""
    num_images = draw(st.integers(1, 2))
    gts = []
    for _ in range(num_images):
        g = draw(st.integers(0, 4))
        gts.append((_boxes(draw, g), torch.tensor(
            [draw(st.integers(0, num_classes - 1)) for _ in range(g)], dtype=torch.int64)))
    anchors = [_boxes(draw, draw(st.integers(4, 40)), min_side=4.0)]
    for boxes, _ in gts:  # jittered copies of the gt: IoU near 1
        anchors.append(boxes + draw(st.floats(-1.0, 1.0)))
    # exact powers of two keep float coordinates exact under the scale test
    anchors = torch.round(torch.cat(anchors).clamp(0, SIZE) * 4) / 4
    wide = anchors[:, 2] - anchors[:, 0] > 0.5
    tall = anchors[:, 3] - anchors[:, 1] > 0.5
    anchors = anchors[wide & tall]
    gts = [(torch.round(b * 4) / 4, c) for b, c in gts]
    return anchors, gts, draw(st.integers(0, 2**16))


def _instances(gts, factor=1.0):
    out = []
    for boxes, classes in gts:
        inst = Instances((int(SIZE * factor), int(SIZE * factor)))
        inst.gt_boxes = Boxes(boxes * factor)
        inst.gt_classes = classes
        out.append(inst)
    return out


def _set_prior(owner, num_classes):
    owner.set_prior(PriorCounts(num_classes=num_classes, num_foreground=30, num_valid=10000,
                                per_class=[30 // num_classes] * num_classes, num_images=10))


def _check_guided(losses, cls_key, reg_key, scale, params):
    """Finite values and gradients; the guided value; no gradient into the box branch
    from the classification loss."""
    for v in losses.values():
        assert torch.isfinite(v).all()
    logits, deltas = params
    g_cls = torch.autograd.grad(losses[cls_key], (logits, deltas), retain_graph=True,
                                allow_unused=True)
    assert torch.isfinite(g_cls[0]).all()
    assert g_cls[1] is None or not g_cls[1].any()  # the ratio is detached
    if losses[reg_key].item() > 0 and losses[cls_key].item() != 0:
        assert losses[cls_key].item() == pytest.approx(scale * losses[reg_key].item(), rel=1e-5)
    total = sum(losses.values())
    grads = torch.autograd.grad(total, (logits, deltas), allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


# -- Sampling-Free RetinaNet --------------------------------------------------------------
@pytest.fixture(scope="module")
def retinanet():
    cfg = load_config(os.path.join(REPO, "configs", "shapes",
                                   "sampling_free_root_resnet18_fpn_demo.py"))
    model = instantiate(cfg.model).train()
    _set_prior(model, model.num_classes)
    return model


def _retinanet_losses(model, anchors, gts, seed, factor=1.0):
    model.loss_normalizer = 100.0  # the EMA state: the same for every call
    model.guided_loss.ratio_ema.fill_(-1.0)
    gen = torch.Generator().manual_seed(seed)
    n, r, k = len(gts), len(anchors), model.num_classes
    logits = (torch.randn(n, r, k, generator=gen) * 8).requires_grad_()
    deltas = torch.randn(n, r, 4, generator=gen).requires_grad_()
    anchor_list = [Boxes(anchors * factor)]
    with EventStorage(0):
        labels, matched = model.label_anchors(anchor_list, _instances(gts, factor))
        losses = model.losses(anchor_list, [logits], labels, [deltas], matched)
    return losses, (logits, deltas), labels


@SETTINGS
@given(scene=scenes(num_classes=3), factor=st.sampled_from([0.5, 2.0]))
def test_sampling_free_retinanet_losses(retinanet, scene, factor):
    anchors, gts, seed = scene
    losses, params, labels = _retinanet_losses(retinanet, anchors, gts, seed)
    _check_guided(losses, "loss_cls", "loss_box_reg", retinanet.guided_loss.scale, params)
    # image scale: same labels, same losses
    again, _, labels2 = _retinanet_losses(retinanet, anchors, gts, seed, factor)
    assert all(torch.equal(a, b) for a, b in zip(labels, labels2))
    for key in losses:
        assert again[key].item() == pytest.approx(losses[key].item(), rel=1e-5, abs=1e-7)


# -- Sampling-Free RPN and ROI box head ---------------------------------------------------
@pytest.fixture(scope="module")
def rcnn():
    cfg = load_config(os.path.join(REPO, "configs", "COCO",
                                   "sampling_free_faster_rcnn_R_50_FPN_1x.py"))
    rpn = instantiate(cfg.model.proposal_generator).train()
    _set_prior(rpn, 1)
    roi = instantiate(cfg.model.roi_heads).train()
    return rpn, roi


def _rpn_losses(rpn, anchors, gts, seed, factor=1.0):
    rpn.guided_loss.ratio_ema.fill_(-1.0)
    gen = torch.Generator().manual_seed(seed)
    n, r = len(gts), len(anchors)
    logits = (torch.randn(n, r, generator=gen) * 8).requires_grad_()
    deltas = torch.randn(n, r, 4, generator=gen).requires_grad_()
    anchor_list = [Boxes(anchors * factor)]
    with EventStorage(0):
        labels, matched = rpn.label_and_sample_anchors(anchor_list, _instances(gts, factor))
        losses = rpn.losses(anchor_list, [logits], labels, [deltas], matched)
    return losses, (logits, deltas), labels, matched


def _box_loss_per_fg_coordinate(transform, beta, weight, boxes, gt_boxes, pred, fg):
    """The box loss as the paper's code normalises it: summed smooth L1 (L1 at beta 0)
    of the foreground deltas over 4 x the foreground count."""
    target = transform.get_deltas(boxes[fg], gt_boxes[fg])
    loss = smooth_l1_loss(pred, target, beta, reduction="sum")
    return weight * loss.item() / max(1, 4 * int(fg.sum()))


@SETTINGS
@given(scene=scenes(num_classes=1), factor=st.sampled_from([0.5, 2.0]))
def test_sampling_free_rpn_losses(rcnn, scene, factor):
    rpn, _ = rcnn
    anchors, gts, seed = scene
    losses, params, labels, matched = _rpn_losses(rpn, anchors, gts, seed)
    _check_guided(losses, "loss_rpn_cls", "loss_rpn_loc", rpn.guided_loss.scale, params)
    # the box loss per foreground anchor coordinate, not per 256 x images
    fg = torch.stack(labels) == 1
    want = _box_loss_per_fg_coordinate(
        rpn.box2box_transform, rpn.smooth_l1_beta, rpn.loss_weight["loss_rpn_loc"],
        anchors.expand(len(gts), -1, -1), torch.stack(matched), params[1][fg], fg)
    assert losses["loss_rpn_loc"].item() == pytest.approx(want, rel=1e-5, abs=1e-7)
    # no sampling: the labels are the matcher's, every non-ignored anchor is trained on
    for lab, (boxes, _) in zip(labels, gts):
        if len(boxes):
            want = rpn.anchor_matcher(pairwise_iou(Boxes(boxes), Boxes(anchors)))[1]
        else:
            want = torch.zeros(len(anchors))
        assert torch.equal(lab, want.to(lab.dtype))
    again, _, labels2, _ = _rpn_losses(rpn, anchors, gts, seed, factor)
    assert all(torch.equal(a, b) for a, b in zip(labels, labels2))
    for key in losses:
        assert again[key].item() == pytest.approx(losses[key].item(), rel=1e-5, abs=1e-7)


def _roi_losses(roi, anchors, gts, seed, factor=1.0):
    """The box predictor's losses on random proposals (``anchors``) labelled by the ROI
    heads' own matcher (every proposal kept, ground truth appended)."""
    roi.box_predictor.guided_loss.ratio_ema.fill_(-1.0)
    proposals = []
    for boxes, _ in gts:
        p = Instances((int(SIZE * factor), int(SIZE * factor)))
        p.proposal_boxes = Boxes(anchors * factor)
        p.objectness_logits = torch.zeros(len(anchors))
        proposals.append(p)
    with EventStorage(0):
        proposals = roi.label_and_sample_proposals(proposals, _instances(gts, factor))
    gen = torch.Generator().manual_seed(seed)
    r = sum(len(p) for p in proposals)
    k = roi.num_classes
    scores = (torch.randn(r, k + 1, generator=gen) * 8).requires_grad_()
    deltas = torch.randn(r, 4 * k, generator=gen).requires_grad_()
    with EventStorage(0):
        losses = roi.box_predictor.losses((scores, deltas), proposals)
    return losses, (scores, deltas), proposals


@SETTINGS
@given(scene=scenes(num_classes=80), factor=st.sampled_from([0.5, 2.0]))
def test_sampling_free_roi_box_losses(rcnn, scene, factor):
    _, roi = rcnn
    anchors, gts, seed = scene
    losses, params, proposals = _roi_losses(roi, anchors, gts, seed)
    bp = roi.box_predictor
    _check_guided(losses, "loss_cls", "loss_box_reg", bp.guided_loss.scale, params)
    # the box loss per foreground proposal coordinate (the class's deltas), not per proposal
    labels = [p.gt_classes for p in proposals]
    gt = torch.cat(labels)
    fg = (gt >= 0) & (gt < roi.num_classes)
    pred = params[1].view(len(gt), roi.num_classes, 4)[fg.nonzero().squeeze(1), gt[fg]]
    want = _box_loss_per_fg_coordinate(
        bp.box2box_transform, bp.smooth_l1_beta, bp.loss_weight["loss_box_reg"],
        torch.cat([p.proposal_boxes.tensor for p in proposals]),
        torch.cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor
                   for p in proposals]), pred, fg)
    assert losses["loss_box_reg"].item() == pytest.approx(want, rel=1e-5, abs=1e-7)
    # every proposal and every gt box is trained on (none ignored at the ROI heads'
    # thresholds, so all of them)
    assert sum(len(x) for x in labels) == sum(len(anchors) + len(b) for b, _ in gts)
    again, _, proposals2 = _roi_losses(roi, anchors, gts, seed, factor)
    labels2 = [p.gt_classes for p in proposals2]
    assert all(torch.equal(a, b) for a, b in zip(labels, labels2))
    for key in losses:
        assert again[key].item() == pytest.approx(losses[key].item(), rel=1e-5, abs=1e-7)
