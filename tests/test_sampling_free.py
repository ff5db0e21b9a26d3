"""Sampling-Free: guided scaling, prior counting and bias, adaptive thresholds, caching."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import detectron2.data.transforms as T
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, BoxMode, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from scratchdet.data import register_coco_dataset
from scratchdet.engine import load_config
from scratchdet.sampling_free import (
    AnchorCounter,
    GuidedLossScaler,
    classification_bias_params,
    count_dataset,
    estimate_priors,
    guided_scale,
    initialize_priors,
)
from scratchdet.sampling_free import prior_heads
from scratchdet.sampling_free.prior import (
    _Batch,
    _group_pairs,
    _image_gt,
    _images_gt,
    load_or_count,
    resize_options,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SF_DEMO = os.path.join(REPO, "configs", "shapes", "sampling_free_root_resnet18_fpn_demo.py")


# -- guided loss scaling ---------------------------------------------------------------
def test_guided_scaling_value_and_gradient():
    x = torch.randn(50, 3, requires_grad=True)
    target = (torch.rand(50, 3) > 0.9).float()
    reg = torch.tensor(0.37)
    plain = F.binary_cross_entropy_with_logits(x, target, reduction="sum")
    ratio = (2.0 * reg / plain).detach()
    g_plain, = torch.autograd.grad(plain, x)
    scaled = guided_scale(F.binary_cross_entropy_with_logits(x, target, reduction="sum"), reg, 2.0)
    assert torch.allclose(scaled, 2.0 * reg)  # logged value = scale x regression loss
    g_scaled, = torch.autograd.grad(scaled, x)
    assert torch.allclose(g_scaled, g_plain * ratio, atol=1e-7)  # CE gradient x detached ratio


def test_guided_scaling_edge_cases():
    x = torch.randn(10, requires_grad=True)
    cls = F.binary_cross_entropy_with_logits(x, torch.zeros(10), reduction="sum")
    # no positive anchor: L_reg == 0 -> finite, no NaN gradient
    out = guided_scale(cls, torch.tensor(0.0))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()
    # zero classification loss -> finite, zero
    z = torch.zeros((), requires_grad=True)
    out = guided_scale(z * 1.0, torch.tensor(0.5))
    out.backward()
    assert out.item() == 0 and torch.isfinite(z.grad)
    # non-finite inputs are not hidden from the trainer's check
    assert not torch.isfinite(guided_scale(torch.tensor(float("nan")), torch.tensor(1.0)))
    # the module falls back to the running ratio when a batch has no positive
    s = GuidedLossScaler(1.0)
    s(torch.tensor(10.0), torch.tensor(1.0))  # ratio 0.1
    assert abs(s(torch.tensor(4.0), torch.tensor(0.0)).item() - 0.4) < 1e-6
    with pytest.raises(ValueError, match="-1"):
        GuidedLossScaler(-1)


# -- counting ----------------------------------------------------------------------------
def _tiny_counter(num_classes=2):
    gen = DefaultAnchorGenerator(sizes=[[16]], aspect_ratios=[[1.0]], strides=[16], offset=0.5)
    matcher = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)
    return AnchorCounter(gen, matcher, num_classes, size_divisibility=0)


def _dict(h, w, boxes, classes, crowd=()):
    annos = [dict(bbox=b, bbox_mode=BoxMode.XYXY_ABS, category_id=c, iscrowd=0)
             for b, c in zip(boxes, classes)]
    annos += [dict(bbox=b, bbox_mode=BoxMode.XYXY_ABS, category_id=0, iscrowd=1) for b in crowd]
    return dict(height=h, width=w, annotations=annos)


def test_counts_equal_a_hand_count():
    # 32x32 images, one 16x16 anchor per 16 px cell: [0,0,16,16], [16,0,32,16], ...
    # image 1: a gt box on anchor 0 -> 1 foreground of class 0, 3 background
    # image 2: a gt box straddling anchors 0 and 1 (IoU 1/3 with each): below 0.4, but
    #          the low-quality rule makes both foreground (class 1); the crowd box is
    #          dropped as Detectron2's mapper drops it
    dicts = [_dict(32, 32, [[0, 0, 16, 16]], [0]),
             _dict(32, 32, [[8, 0, 24, 16]], [1], crowd=[[16, 16, 32, 32]])]
    c = count_dataset(dicts, _tiny_counter(), [], head_classes=2, progress=False)
    assert (c.num_foreground, c.num_valid, c.per_class) == (3, 8, [1, 2])
    assert c.prior == pytest.approx(3 / 8 / 2)
    assert c.per_class_prior == pytest.approx([1 / 8, 2 / 8])
    # the mapper's resize is applied to boxes and image size: 64 px images resized to 32
    big = [_dict(64, 64, [[0, 0, 32, 32]], [0]), _dict(64, 64, [[16, 0, 48, 32]], [1])]
    c2 = count_dataset(big, _tiny_counter(), [T.ResizeShortestEdge(32, 1000)], 2, False)
    assert (c2.num_foreground, c2.num_valid, c2.per_class) == (3, 8, [1, 2])
    # multi-scale: each size the mapper can produce counts once per image
    c3 = count_dataset(big, _tiny_counter(),
                       [T.ResizeShortestEdge((32, 64), 1000, sample_style="choice")], 2, False)
    assert c3.num_valid == 8 + 2 * 16


def _random_counter(rng):
    strides = sorted(int(x) for x in rng.choice([4, 8, 16, 32], rng.integers(1, 4), replace=False))
    sizes = [[float(s * rng.choice([1, 2, 4])), float(s * rng.choice([3, 5]))] for s in strides]
    gen = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=[[0.5, 1.0, 2.0]] * len(strides),
                                 strides=strides, offset=float(rng.choice([0.0, 0.5])))
    low, high = sorted(rng.uniform(0.2, 0.8, 2))
    matcher = Matcher([low, high], [0, -1, 1], allow_low_quality_matches=bool(rng.integers(2)))
    return AnchorCounter(gen, matcher, 3, size_divisibility=int(rng.choice([0, 32])))


def _random_boxes(rng, h, w):
    """Boxes of every kind a messy dataset has: ordinary, tiny, huge, partly or wholly
    outside the image, zero or negative area, duplicates with another class."""
    n = int(rng.integers(0, 10))
    xy = rng.uniform(-0.2, 1.1, (n, 2)) * [w, h]
    wh = rng.uniform(0.5, 1.0, (n, 2)) * [w, h] * rng.choice([0.01, 0.1, 0.4, 1.2], (n, 1))
    boxes = np.concatenate([xy, xy + wh], 1)
    extra = [[5, 5, 5, 30], [10, 10, 4, 20], [w * 2, h * 2, w * 3, h * 3], [0, 0, w, h],
             [1.0, 1.0, 1.5, 1.4]]
    boxes = np.concatenate([boxes, np.array(extra)[rng.random(len(extra)) < 0.3].reshape(-1, 4)])
    if len(boxes) and rng.random() < 0.5:
        boxes = np.concatenate([boxes, boxes[:1]])  # a duplicate, maybe of another class
    return boxes, rng.integers(0, 3, len(boxes))


def test_sparse_counting_equals_the_dense_matcher_on_random_boxes():
    """The fast path labels exactly the anchors Detectron2's Matcher labels on the full
    IoU matrix, for random anchor layouts, thresholds, low-quality rule and boxes."""
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(40):
        counter = _random_counter(rng)
        assert counter.sparse
        items = []
        for _ in range(int(rng.integers(1, 6))):
            h, w = (int(x) for x in rng.integers(20, 160, 2))
            boxes, classes = _random_boxes(rng, h, w)
            items.append(counter.make_item(boxes, classes, h, w, int(rng.integers(1, 3))))
        fg, valid, per_class = counter.count_items(items)
        dense = [counter._dense_item(it) for it in items]
        assert fg.tolist() == [d[0] for d in dense]
        assert valid.tolist() == [d[1] for d in dense]
        assert per_class.tolist() == sum(it.weight * d[2] for it, d in zip(items, dense)).tolist()
        checked += int(fg.sum() > 0)
    assert checked > 20  # the cases have foreground to get wrong


def test_sparse_anchor_boxes_are_detectron2s_bit_for_bit():
    gen = DefaultAnchorGenerator(sizes=[[32, 40], [64, 80], [128, 161]],
                                 aspect_ratios=[[0.5, 1.0, 2.0]] * 3, strides=[8, 16, 32],
                                 offset=0.5)
    counter = AnchorCounter(gen, Matcher([0.4, 0.5], [0, -1, 1], True), 2)
    grid = counter.grid_sizes(301, 517)
    want = gen._grid_anchors([list(g) for g in grid])
    for lvl, ((h, w), anchors) in enumerate(zip(grid, want)):
        cells = np.flatnonzero(counter._cell_level == lvl)
        iy, ix, a = np.meshgrid(np.arange(h), np.arange(w), np.arange(len(cells)), indexing="ij")
        got = counter._anchor_boxes(cells[a.ravel()], ix.ravel(), iy.ravel())
        assert np.array_equal(got, anchors.numpy())


def test_sparse_windows_hold_every_pair_at_the_threshold_with_its_exact_iou():
    """``_windows`` returns exactly the (box, anchor) pairs whose ``pairwise_iou`` entry
    reaches the box's threshold, each with that entry's value bit for bit."""
    rng = np.random.default_rng(4)
    checked = 0
    for _ in range(25):
        counter = _random_counter(rng)
        h, w = (int(x) for x in rng.integers(40, 400, 2))
        boxes, classes = _random_boxes(rng, h, w)
        it = counter.make_item(boxes, classes, h, w)
        if not len(it.boxes):
            continue
        batch = _Batch.of([it], len(counter.anchor_generator.strides))
        sizes = batch.grids[:, :, 0] * batch.grids[:, :, 1] * counter._cells_per_level
        thr = rng.uniform(0.05, 0.8, len(it.boxes))
        pairs = counter._windows(it.boxes, np.arange(len(it.boxes)), thr,
                                 np.zeros(len(it.boxes), np.int64), batch.grids,
                                 np.cumsum(sizes, 1) - sizes)
        anchors = Boxes(torch.cat(counter.anchor_generator._grid_anchors(
            [list(g) for g in it.grid])))
        dense = pairwise_iou(Boxes(torch.from_numpy(it.boxes)), anchors).numpy()
        want = {(int(i), int(j)) for i, j in zip(*np.nonzero(dense >= thr[:, None]))}
        got = list(zip(pairs.box.tolist(), pairs.flat.tolist()))
        assert len(got) == len(set(got)) and set(got) == want
        assert np.array_equal(pairs.iou, dense[pairs.box, pairs.flat])
        assert np.array_equal(counter._pair_anchors([pairs], np.arange(len(got))),
                              anchors.tensor.numpy()[pairs.flat])
        checked += len(got)
    assert checked > 1000


def test_sparse_iou_equals_pairwise_iou_bit_for_bit():
    """The counter's float32 IoU is Detectron2's ``pairwise_iou`` entry for entry, for
    boxes that overlap, touch, nest, coincide or are apart."""
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 900, (4000, 2)).astype(np.float32)
    wh = (rng.uniform(0.5, 400, (4000, 2)) * rng.choice([0.01, 1, 3], (4000, 1))).astype(np.float32)
    a = np.concatenate([xy, xy + wh], 1)
    b = (a + rng.uniform(-60, 60, a.shape) * rng.choice([0, 0.1, 1], (4000, 1))).astype(np.float32)
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 0.25)
    b[::7] = a[::7]  # identical boxes
    b[1::7, 0] = a[1::7, 2]  # touching on an edge
    b[1::7, 2] = a[1::7, 2] + 10
    got = AnchorCounter._iou(a, b)
    want = torch.diagonal(pairwise_iou(Boxes(torch.from_numpy(a)), Boxes(torch.from_numpy(b))))
    assert got.dtype == np.float32 and np.array_equal(got, want.numpy())
    assert (got == 1).sum() >= 4000 // 7 and (got == 0).sum() > 500 and ((got > 0) & (got < 1)).any()


def test_group_pairs_groups_every_anchor_with_boxes_in_order():
    """The hash grouping equals a sort by (anchor, box), collisions included: 60k pairs in
    a table of 2**18 slots, a fifth of the anchors shared by up to 4 boxes."""
    rng = np.random.default_rng(2)
    anchors = rng.choice(10 ** 9, 50_000, replace=False)
    anchor = np.concatenate([anchors] + [anchors[rng.random(50_000) < 0.2] for _ in range(3)])
    box = rng.integers(0, 500, len(anchor))
    keep = np.unique(np.stack([anchor, box], 1), axis=0, return_index=True)[1]
    anchor, box = anchor[keep], box[keep]  # one pair per (box, anchor), in any order
    perm = rng.permutation(len(anchor))
    anchor, box = anchor[perm], box[perm]
    order, first = _group_pairs(anchor, box, 500)
    assert sorted(order.tolist()) == list(range(len(anchor)))
    groups = np.split(order, np.flatnonzero(first)[1:])
    assert first[0] and len(groups) == len(np.unique(anchor)) > 50_000 * 0.99
    for grp in groups[::97] + [grp for grp in groups if len(grp) > 1][::13]:
        assert len(set(anchor[grp])) == 1 and (np.diff(box[grp]) > 0).all()
    assert sum(len(grp) > 1 for grp in groups) > 5000
    # against a sort by (anchor, box): the same groups, boxes in the same order
    ref = np.lexsort((box, anchor))
    want = np.split(box[ref], np.flatnonzero(np.diff(anchor[ref])) + 1)
    got = sorted(groups, key=lambda grp: anchor[grp[0]])
    assert all(np.array_equal(box[g], w) for g, w in zip(got, want)) and len(got) == len(want)


def test_image_batch_builds_the_items_make_item_builds():
    """The vectorised items of many images at many sizes equal :meth:`make_item`'s, one
    by one: the same float32 boxes (scaled, clipped, filtered), classes, grids, weights."""
    rng = np.random.default_rng(3)
    counter = _random_counter(rng)
    augs = [T.ResizeShortestEdge((96, 128, 128, 160), 200, sample_style="choice")]
    images, items = [], []
    for _ in range(12):
        h, w = (int(x) for x in rng.integers(20, 300, 2))
        boxes, classes = _random_boxes(rng, h, w)
        sizes = np.array([(nh, nw, n) for (nh, nw), n in resize_options(augs, h, w)], np.int64)
        images.append((boxes, classes, h, w, sizes))
        for nh, nw, n in sizes:
            scale = np.array([nw / w, nh / h, nw / w, nh / h])
            items.append(counter.make_item(boxes * scale, classes, int(nh), int(nw), int(n)))
    batch, image_of = counter.image_batch(images)
    want = _Batch.of(items, len(counter.anchor_generator.strides))
    assert image_of.tolist() == [i for i, im in enumerate(images) for _ in im[4]]
    assert batch.boxes.dtype == want.boxes.dtype == np.float32
    for name in ("boxes", "classes", "counts", "grids", "weights"):
        assert np.array_equal(getattr(batch, name), getattr(want, name)), name
    assert len(batch.boxes) > 20 and (batch.weights == 2).any()
    assert np.array_equal(counter.count_batch(batch)[0], counter.count_items(items)[0])


def test_image_gt_converts_as_the_mapper_does():
    """``_image_gt`` gives, box for box, what the mapper's ``BoxMode.convert`` of each
    annotation gives (float32 arithmetic for Python floats, XYXY boxes untouched),
    whatever the number types and modes, crowd boxes dropped and corners ordered."""
    def mapper_boxes(annos):
        out = [np.array(BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS), np.float64)
               for a in annos if not a.get("iscrowd", 0)]
        b = np.array(out).reshape(-1, 4)
        return np.concatenate([b[:, :2].clip(max=b[:, 2:]), b[:, 2:].clip(min=b[:, :2])], 1)

    xywh, xyxy = BoxMode.XYWH_ABS, BoxMode.XYXY_ABS
    cases = {
        "floats": [dict(bbox=[0.1, 0.7, 10.3, 5.9], bbox_mode=xywh, category_id=1),
                   dict(bbox=[100.13, 3.3, 0.37, 7.7], bbox_mode=xywh, category_id=0)],
        "ints and mixed": [dict(bbox=[3, 4, 10, 20], bbox_mode=xywh, category_id=0),
                           dict(bbox=[3, 4.1, 10, 20], bbox_mode=xywh, category_id=2)],
        "xyxy floats": [dict(bbox=[0.1, 0.7, 10.3, 5.9], bbox_mode=xyxy, category_id=1)],
        "both modes, crowd": [dict(bbox=[0.1, 0.7, 10.3, 5.9], bbox_mode=xyxy, category_id=1),
                              dict(bbox=(1.1, 2.2, 3.3, 4.4), bbox_mode=xywh, category_id=0),
                              dict(bbox=[5, 5, 1, 1], bbox_mode=xywh, category_id=0, iscrowd=1)],
        "numpy scalars": [dict(bbox=list(np.array([0.1, 0.7, 10.3, 5.9])), bbox_mode=xywh,
                               category_id=0),
                          dict(bbox=list(np.array([1.1, 0.7, 10.3, 5.9], np.float32)),
                               bbox_mode=xywh, category_id=1)],
        "inverted": [dict(bbox=[10.5, 8.25, -4.1, -2.2], bbox_mode=xywh, category_id=0),
                     dict(bbox=[30.0, 8.0, 20.5, 2.0], bbox_mode=xyxy, category_id=1)],
        "huge ints": [dict(bbox=[2 ** 25 + 1, 3, 5, 7], bbox_mode=xywh, category_id=0)],
    }
    for name, annos in cases.items():
        boxes, classes = _image_gt({"annotations": annos})
        assert boxes.dtype == np.float64 and np.array_equal(boxes, mapper_boxes(annos)), name
        assert classes.tolist() == [a["category_id"] for a in annos if not a.get("iscrowd", 0)]
    # float32 arithmetic is visible: 0.1 + 10.3 in float32 is not the float64 sum
    assert _image_gt({"annotations": cases["floats"]})[0][0, 2] != 0.1 + 10.3
    assert _image_gt({"annotations": []})[0].shape == (0, 4)
    # many images at once (as count_dataset reads a chunk): the same, image by image,
    # whichever path the chunk takes (the huge ints send it box by box)
    for names in (["floats", "ints and mixed", "both modes, crowd"], list(cases)):
        dicts = [{"annotations": cases[n]} for n in names] + [{"annotations": []}]
        boxes, classes, num = _images_gt(dicts)
        assert num.tolist() == [len(_image_gt(d)[0]) for d in dicts]
        assert np.array_equal(boxes, np.concatenate([_image_gt(d)[0] for d in dicts]))
        assert np.array_equal(classes, np.concatenate([_image_gt(d)[1] for d in dicts]))


def test_cache_reused_and_invalidated(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHDET_CACHE", str(tmp_path))
    dicts = [_dict(32, 32, [[0, 0, 16, 16]], [0])] * 3
    a, hit = load_or_count("d", dicts, _tiny_counter(), [], 2, progress=False)
    assert not hit
    b, hit = load_or_count("d", dicts, _tiny_counter(), [], 2, progress=False)
    assert hit and b.to_dict() == a.to_dict()
    # other anchor sizes: recomputed
    gen = DefaultAnchorGenerator(sizes=[[20]], aspect_ratios=[[1.0]], strides=[16], offset=0.5)
    other = AnchorCounter(gen, Matcher([0.4, 0.5], [0, -1, 1], True), 2)
    _, hit = load_or_count("d", dicts, other, [], 2, progress=False)
    assert not hit
    # a corrupt cache file is recounted, not trusted
    for f in os.listdir(tmp_path / "priors"):
        (tmp_path / "priors" / f).write_text("{not json")
    c, hit = load_or_count("d", dicts, _tiny_counter(), [], 2, progress=False)
    assert not hit and c.to_dict()["num_foreground"] == a.num_foreground


# -- the model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sf_demo():
    cfg = load_config(SF_DEMO)
    cfg.dataloader.train.dataset.names = "scratchdet_shapes_val"
    cfg.dataloader.train.total_batch_size = 2
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    counts = initialize_priors(cfg, model, progress=False)
    return cfg, model, counts


def test_bias_equals_prior_and_thresholds(sf_demo):
    cfg, model, counts = sf_demo
    p = counts["retinanet"].prior
    assert 1e-5 < p < 1e-2
    for b in classification_bias_params(model.head):
        assert torch.allclose(torch.sigmoid(b.double()), torch.full_like(b.double(), p))
    thr = model.score_thresholds()
    assert torch.allclose(thr.double(), torch.full((3,), p * 3, dtype=torch.float64))


def test_training_refuses_without_prior_and_handles_empty_batches(sf_demo):
    cfg, model, _ = sf_demo
    fresh = instantiate(cfg.model).train()
    img = torch.rand(3, 160, 160) * 255
    empty = Instances((160, 160), gt_boxes=Boxes(torch.zeros(0, 4)),
                      gt_classes=torch.zeros(0, dtype=torch.int64))
    with EventStorage(0), pytest.raises(RuntimeError, match="prior is not set"):
        fresh([dict(image=img, instances=empty)])
    model.train()
    with EventStorage(0):
        losses = model([dict(image=img, instances=empty)] * 2)  # no positive anywhere
        sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.zero_grad()


def test_adaptive_threshold_applied_and_survives_checkpoint(sf_demo, tmp_path):
    cfg, model, _ = sf_demo
    model.eval()
    # make the per-class rule visible: distinct thresholds per class
    model.prior_state.rule = "per_class"
    model.set_prior(estimate_priors(cfg, model, progress=False)["retinanet"])
    thr = model.score_thresholds().clone()
    assert len(set(thr.tolist())) > 1
    x = [dict(image=torch.rand(3, 160, 160) * 255, height=160, width=160)]
    with torch.no_grad():
        inst = model(x)[0]["instances"]
    assert len(inst) > 0
    assert (inst.scores > thr[inst.pred_classes]).all()
    DetectionCheckpointer(model, str(tmp_path)).save("m")
    fresh = instantiate(cfg.model).eval()
    assert not fresh.prior_state.is_set
    DetectionCheckpointer(fresh).load(str(tmp_path / "m.pth"))
    assert torch.equal(fresh.score_thresholds(), thr)
    assert fresh.prior_state.prior.item() == model.prior_state.prior.item()
    with torch.no_grad():
        again = fresh(x)[0]["instances"]
    assert torch.allclose(again.scores, inst.scores)


# -- real COCO ---------------------------------------------------------------------------
def _coco_mini_cfg(config, coco_mini):
    cfg = load_config(os.path.join(REPO, "configs", "COCO", config))
    register_coco_dataset("coco_mini_train", os.path.join(coco_mini, "annotations",
                                                          "instances_train2017.json"),
                          os.path.join(coco_mini, "train2017"))
    cfg.dataloader.train.dataset.names = "coco_mini_train"
    return cfg


def test_coco_mini_priors_match_the_papers_order(coco_mini):
    cfg = _coco_mini_cfg("sampling_free_retinanet_R_50_FPN_1x.py", coco_mini)
    p = estimate_priors(cfg, instantiate(cfg.model), progress=False)["retinanet"].prior
    assert 1e-6 < p < 1e-4, p  # paper: 1e-5 for RetinaNet R50-FPN on COCO
    cfg = _coco_mini_cfg("sampling_free_faster_rcnn_R_50_FPN_1x.py", coco_mini)
    p = estimate_priors(cfg, instantiate(cfg.model), progress=False)["rpn"].prior
    assert 2e-5 < p < 2e-3, p  # paper: 2e-4 for the RPN


@pytest.mark.parametrize("config", ["sampling_free_retinanet_R_50_FPN_1x.py",
                                    "sampling_free_faster_rcnn_R_50_FPN_1x.py"])
def test_counts_equal_the_labels_training_gives(coco_mini, config):
    """On real COCO images through Detectron2's train mapper, the estimator's counts are
    those of the model's own anchor labelling (RetinaNet's and the RPN's
    ``label_and_sample_anchors`` / ``label_anchors``); and its fast path equals the dense
    Matcher on every (image, size) of the config's multi-scale training."""
    from detectron2.data import DatasetMapper

    cfg = _coco_mini_cfg(config, coco_mini)
    model = instantiate(cfg.model).eval()
    dicts = instantiate(cfg.dataloader.train.dataset)[:6]
    (name, gen, matcher, head_classes, owner), = prior_heads(model)
    counter = AnchorCounter(gen, matcher, 80, model.backbone.size_divisibility)
    assert counter.sparse
    # one fixed size and no flip, so that the mapper's output is the counted image
    augs = [T.ResizeShortestEdge(640, 1333)]
    mapper = DatasetMapper(is_train=True, augmentations=augs, image_format="BGR")
    fg = valid = 0
    per_class = np.zeros(80, np.int64)
    for d in dicts:
        inst = mapper(dict(d))["instances"]
        anchors = [Boxes(a) for a in gen._grid_anchors(
            [list(g) for g in counter.grid_sizes(*inst.image_size)])]
        with torch.no_grad():
            if name == "retinanet":
                labels = model.label_anchors(anchors, [inst])[0][0]
                is_fg = (labels >= 0) & (labels < 80)
                per_class += np.bincount(labels[is_fg].numpy(), minlength=80)
            else:
                labels = owner.label_and_sample_anchors(anchors, [inst])[0][0]
                is_fg = labels == 1
        fg += int(is_fg.sum())
        valid += int((labels != -1).sum())
    c = count_dataset(dicts, counter, augs, head_classes, progress=False)
    assert (c.num_foreground, c.num_valid) == (fg, valid) and fg > 0
    if name == "retinanet":
        assert c.per_class == per_class.tolist()
    # the config's own multi-scale sizes: fast path == dense Matcher, item by item
    items = []
    train_augs = list(instantiate(cfg.dataloader.train.mapper.augmentations))
    for d in dicts:
        boxes, classes = _image_gt(d)
        for (h, w), n in resize_options(train_augs, d["height"], d["width"]):
            scale = np.array([w / d["width"], h / d["height"]] * 2)
            items.append(counter.make_item(boxes * scale, classes, h, w, n))
    fg_s, valid_s, pc_s = counter.count_items(items)
    dense = [counter._dense_item(it) for it in items]
    assert fg_s.tolist() == [x[0] for x in dense] and valid_s.tolist() == [x[1] for x in dense]
    assert pc_s.tolist() == sum(it.weight * x[2] for it, x in zip(items, dense)).tolist()


def test_estimate_prior_tool_two_processes_equal_one(coco_mini, tmp_path):
    ann = os.path.join(coco_mini, "annotations", "instances_val2017.json")
    base = [sys.executable, os.path.join(REPO, "tools", "estimate_prior.py"), "--quiet",
            "--no-cache", "--config-file", SF_DEMO.replace("shapes/sampling_free_root_resnet18_fpn_demo",
                                                         "coco_mini/sampling_free_root_resnet18_fpn_coco_mini")]
    outs = []
    for n in (1, 2):
        p = subprocess.run(base[:2] + ["--num-gpus", str(n)] + base[2:], capture_output=True,
                           text=True, timeout=600, cwd=str(tmp_path))
        assert p.returncode == 0, p.stderr[-3000:]
        outs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    one, two = outs
    for k in ("prior", "per_class_prior", "num_foreground", "num_anchors_counted", "num_images"):
        assert one[k] == two[k], k
    assert one["num_images"] == 80 and len(one["per_class_prior"]) == 80
    # sampling: N images, with a standard error
    p = subprocess.run(base + ["--num-images", "20"], capture_output=True, text=True,
                       timeout=600, cwd=str(tmp_path))
    s = json.loads(p.stdout.strip().splitlines()[-1])
    assert s["num_images"] == 20 and s["stderr"] > 0 and math.isfinite(s["stderr"])
    assert abs(s["prior"] - one["prior"]) < 5 * s["stderr"]
    assert os.path.isfile(ann)


def test_mask_rcnn_on_sampling_free_roi_heads_trains(coco_mini):
    from detectron2.model_zoo import get_config
    from detectron2.config import LazyCall as L
    from scratchdet.sampling_free import SamplingFreeROIHeads

    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "sf_models", os.path.join(REPO, "configs", "common", "models", "sampling_free.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model_cfg = mod.sampling_free_rcnn(get_config("common/models/mask_rcnn_fpn.py").model)
    model_cfg.backbone.bottom_up.stages.norm = "BN"
    model_cfg.backbone.bottom_up.stem.norm = "BN"
    model = instantiate(model_cfg).train()
    assert isinstance(model.roi_heads, SamplingFreeROIHeads)
    cfg = _coco_mini_cfg("sampling_free_faster_rcnn_R_50_FPN_1x.py", coco_mini)
    initialize_priors(cfg, model, progress=False)
    data = get_config("common/data/coco.py").dataloader
    data.train.dataset.names = "coco_mini_train"
    data.train.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=192, max_size=256)]
    data.train.total_batch_size = 2
    data.train.num_workers = 0
    batch = next(iter(instantiate(data.train)))
    with EventStorage(0) as storage:
        losses = model(batch)
        sum(losses.values()).backward()
    assert {"loss_mask", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    # box head: classification scaled to twice the box loss; RPN: to its box loss
    assert losses["loss_cls"].item() == pytest.approx(2 * losses["loss_box_reg"].item(), rel=1e-4)
    assert losses["loss_rpn_cls"].item() == pytest.approx(losses["loss_rpn_loc"].item(), rel=1e-4)
    del storage


def test_yacs_configs_can_name_the_sampling_free_modules():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from scratchdet import add_scratchdet_config
    from scratchdet.sampling_free import (SamplingFreeFastRCNNOutputLayers,
                                          SamplingFreeRetinaNet, SamplingFreeRPN)

    cfg = add_scratchdet_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0  # nothing frozen, as the from-scratch YAML bases set
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.META_ARCHITECTURE = "SamplingFreeRetinaNet"
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    m = build_model(cfg)
    assert isinstance(m, SamplingFreeRetinaNet) and m.test_nms_thresh == 0.55
    assert m.guided_loss.scale == 1.0 and m.prior_state.rule == "global"

    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "SamplingFreeRPN"
    cfg.MODEL.ROI_HEADS.NAME = "SamplingFreeROIHeads"
    m = build_model(cfg)
    assert isinstance(m.proposal_generator, SamplingFreeRPN)
    bp = m.roi_heads.box_predictor
    assert isinstance(bp, SamplingFreeFastRCNNOutputLayers)
    assert bp.test_score_thresh == 1e-4 and bp.guided_loss.scale == 2.0
