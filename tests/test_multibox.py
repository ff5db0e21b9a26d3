"""SSD's MultiBox loss and matching (ScratchDet300's loss) against direct, slow references."""
import math

import pytest
import torch
import torch.nn.functional as F

from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from scratchdet.modeling import SSDMatcher, hard_negative_mask, multibox_loss


# -- references: one image, one anchor at a time ---------------------------------------------
def reference_match(iou, threshold=0.5):
    """ssd.pytorch's ``match``: best ground truth per anchor, thresholded, then each ground
    truth's best anchor forced to it (in ground-truth order, the later one winning)."""
    g, r = iou.shape
    matches, labels = [], []
    for a in range(r):
        col = [float(iou[j, a]) for j in range(g)]
        best = max(range(g), key=lambda j: (col[j], -j))  # first maximum, as torch.max
        matches.append(best)
        labels.append(1 if col[best] >= threshold else 0)
    for j in range(g):
        row = [float(iou[j, a]) for a in range(r)]
        best = max(range(r), key=lambda a: (row[a], -a))
        if row[best] > 0:
            matches[best], labels[best] = j, 1
    return matches, labels


def reference_loss(logits, deltas, labels, target, ratio=3.0, beta=1.0):
    """The MultiBox loss written out image by image and anchor by anchor."""
    n, r, k1 = logits.shape
    k = k1 - 1
    cls, box, num_pos, kept = 0.0, 0.0, 0, []
    for i in range(n):
        ce = [float(-F.log_softmax(logits[i, a].double(), 0)[max(int(labels[i, a]), 0)])
              for a in range(r)]
        pos = [a for a in range(r) if 0 <= labels[i, a] < k]
        neg = sorted((a for a in range(r) if labels[i, a] == k), key=lambda a: -ce[a])
        neg = neg[: min(int(math.floor(ratio * len(pos))), len(neg))]
        kept.append(set(neg))
        cls += sum(ce[a] for a in pos + neg)
        for a in pos:
            for c in range(4):
                d = abs(float(deltas[i, a, c]) - float(target[i, a, c]))
                box += 0.5 * d * d / beta if d < beta else d - 0.5 * beta
        num_pos += len(pos)
    z = max(num_pos, 1)
    return cls / z, box / z, kept


def _random_batch(seed, n=3, r=60, k=4, no_positive_image=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, r, k + 1, generator=g) * 3
    deltas = torch.randn(n, r, 4, generator=g)
    target = torch.randn(n, r, 4, generator=g) * 2
    u = torch.rand(n, r, generator=g)
    labels = torch.full((n, r), k)
    labels[u < 0.15] = torch.randint(0, k, (n, r), generator=g)[u < 0.15]
    labels[(u >= 0.15) & (u < 0.2)] = -1  # ignored
    if no_positive_image:
        labels[0][labels[0] < k] = k  # an image without positives (ignored ones too)
    target[labels == k] = float("inf")  # never read outside the positives
    return logits, deltas, labels, target


# -- tests -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_ssd_matcher_equals_ssd_match(seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(40, 2, generator=g) * 200
    anchors = Boxes(torch.cat([xy, xy + 10 + torch.rand(40, 2, generator=g) * 60], 1))
    gxy = torch.rand(6, 2, generator=g) * 200
    gt = Boxes(torch.cat([gxy, gxy + 5 + torch.rand(6, 2, generator=g) * 80], 1))
    iou = pairwise_iou(gt, anchors)
    matches, labels = SSDMatcher([0.5], [0, 1])(iou)
    ref_matches, ref_labels = reference_match(iou)
    assert labels.tolist() == ref_labels
    pos = [a for a in range(len(ref_labels)) if ref_labels[a] == 1]
    assert [int(matches[a]) for a in pos] == [ref_matches[a] for a in pos]


def test_ssd_matcher_gives_every_box_its_best_anchor():
    # box 1's best anchor (1) overlaps box 0 more: Detectron2's low-quality rule leaves
    # box 1 without an anchor, SSD's rule gives anchor 1 to box 1
    iou = torch.tensor([[0.9, 0.45, 0.0],
                        [0.0, 0.30, 0.1]])
    m, lab = SSDMatcher([0.5], [0, 1])(iou)
    assert m.tolist() == [0, 1, 1] and lab.tolist() == [1, 1, 0]
    m2, lab2 = Matcher([0.5], [0, 1], allow_low_quality_matches=True)(iou)
    assert 1 not in m2[lab2 == 1].tolist()
    # a box that overlaps no anchor stays unmatched; no box: all background
    m, lab = SSDMatcher([0.5], [0, 1])(torch.tensor([[0.0, 0.0, 0.0]]))
    assert lab.tolist() == [0, 0, 0]
    m, lab = SSDMatcher([0.5], [0, 1])(torch.zeros(0, 3))
    assert lab.tolist() == [0, 0, 0]


@pytest.mark.parametrize("seed", range(6))
def test_multibox_loss_equals_the_reference(seed):
    logits, deltas, labels, target = _random_batch(seed)
    ratio = [3.0, 1.0, 0.5][seed % 3]
    got = multibox_loss(logits, deltas, labels, target, neg_pos_ratio=ratio, smooth_l1_beta=1.0)
    cls, box, kept = reference_loss(logits, deltas, labels, target, ratio)
    assert got["loss_cls"].item() == pytest.approx(cls, rel=1e-5)
    assert got["loss_box_reg"].item() == pytest.approx(box, rel=1e-5)
    k = logits.shape[-1] - 1
    ce = F.cross_entropy(logits.flatten(0, 1), labels.clamp(min=0).flatten(),
                         reduction="none").view_as(labels)
    pos = ((labels >= 0) & (labels < k)).sum(1)
    mask = hard_negative_mask(ce, labels == k, torch.floor(pos * ratio).long())
    for i in range(len(labels)):
        chosen = set(torch.nonzero(mask[i]).flatten().tolist())
        assert chosen == kept[i]
        negatives = (labels[i] == k).sum().item()
        assert len(chosen) == min(int(math.floor(ratio * pos[i].item())), negatives)
        if chosen:  # the kept negatives are the highest-loss ones
            others = (labels[i] == k) & ~mask[i]
            if others.any():
                assert ce[i][mask[i]].min() >= ce[i][others].max()
    assert not mask[0].any(), "an image without positives keeps no negative"


def test_negatives_capped_and_no_positive_batch():
    logits = torch.randn(1, 10, 3, requires_grad=True)
    labels = torch.tensor([[0, 1, 2, 2, 2, -1, -1, -1, -1, -1]])  # 2 positives, 3 negatives
    ce = F.cross_entropy(logits[0], labels[0].clamp(min=0), reduction="none")[None]
    mask = hard_negative_mask(ce, labels == 2, torch.tensor([6]))
    assert mask.sum() == 3 and mask[0, 2:5].all()  # min(3 x 2, 3)
    out = multibox_loss(logits, torch.zeros(1, 10, 4), torch.full((1, 10), 2),
                        torch.zeros(1, 10, 4))
    assert out["loss_cls"].item() == 0 and out["loss_box_reg"].item() == 0
    out["loss_cls"].backward()  # no positive in the batch: finite zero loss, zero gradient
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_gradient_flows_only_through_positives_and_kept_negatives():
    logits, deltas, labels, target = _random_batch(7, no_positive_image=False)
    logits.requires_grad_(True)
    multibox_loss(logits, deltas, labels, target)["loss_cls"].backward()
    k = logits.shape[-1] - 1
    touched = logits.grad.abs().sum(-1) > 0
    assert not touched[labels == -1].any()
    assert touched[(labels >= 0) & (labels < k)].all()
    pos = ((labels >= 0) & (labels < k)).sum(1)
    assert (touched & (labels == k)).sum(1).tolist() == \
        torch.minimum(3 * pos, (labels == k).sum(1)).tolist()


def _small_ssd300(loss="multibox"):
    cfg = LazyConfig.load("configs/common/models/scratchdet_ssd300.py")
    bb = cfg.model.backbone.bottom_up
    bb.stem_channels, bb.res2_out_channels, bb.depth = 8, 8, 18
    cfg.model.head.input_shape = [ShapeSpec(channels=c) for c in [32, 64, 128, 128, 128, 128]]
    cfg.model.num_classes = 3
    cfg.model.loss = loss
    return instantiate(cfg.model)


def _batch():
    inst = Instances((300, 300))
    inst.gt_boxes = Boxes(torch.tensor([[20.0, 30, 120, 160], [200, 200, 230, 220]]))
    inst.gt_classes = torch.tensor([0, 2])
    torch.manual_seed(0)
    return [dict(image=torch.randint(0, 255, (3, 300, 300)).float(), instances=inst)] * 2


def test_scratchdet300_trains_multibox_and_infers_softmax_scores():
    model = _small_ssd300()
    assert model.loss == "multibox" and isinstance(model.anchor_matcher, SSDMatcher)
    assert [m[0].out_channels for m in model.head.cls_convs] == [a * 4 for a in [4, 6, 6, 6, 4, 4]]
    assert all((b == 0).all() for b in model.head.cls_bias_params())
    batch = _batch()
    # logits 0 for the 3 classes and log(3) for the background (last of every anchor's
    # 4): softmax gives the background 1/2 and each class 1/6
    model.eval()
    model.test_score_thresh = 0.0
    with torch.no_grad():
        for conv, bias in zip(model.head.cls_convs, model.head.cls_bias_params()):
            conv[0].weight.zero_()
            bias.copy_(torch.tensor([0.0, 0.0, 0.0, math.log(3)]).repeat(len(bias) // 4))
        inst = model([dict(image=batch[0]["image"], height=600, width=600)])[0]["instances"]
    assert inst.image_size == (600, 600)
    assert 0 < len(inst) <= 200 and set(inst.pred_classes.tolist()) <= {0, 1, 2}
    torch.testing.assert_close(inst.scores, torch.full((len(inst),), 1 / 6))
    model.train()
    with EventStorage(0) as storage:
        losses = model(batch)
        num_pos = storage.latest()["num_pos_anchors"][0]
    assert num_pos >= 2  # each box has at least its best anchor
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_focal_loss_is_one_line():
    model = _small_ssd300("focal").train()
    assert model.head.num_scores == 3
    b = -math.log(99.0)
    assert all(torch.allclose(p, torch.full_like(p, b)) for p in model.head.cls_bias_params())
    with EventStorage(0):
        losses = model(_batch())
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_head_and_model_loss_must_agree():
    cfg = LazyConfig.load("configs/common/models/scratchdet_ssd300.py")
    cfg.model.head.loss = "focal"
    with pytest.raises(ValueError, match="head's loss is 'focal'"):
        instantiate(cfg.model)
    cfg.model.head.loss = "${..loss}"
    cfg.model.loss = "softmax"
    with pytest.raises(ValueError, match="'softmax' is not one of"):
        instantiate(cfg.model)
