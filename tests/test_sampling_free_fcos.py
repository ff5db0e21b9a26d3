"""Sampling-Free FCOS: the prior counted with FCOS's own assignment (exactly Detectron2's
``label_anchors``), the loss over every location with guided scaling, the adaptive
thresholds with a one-pass floor, empty images, and the counter's generalisation
(the IoU path's fingerprints unchanged)."""
import json
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
from detectron2.data import DatasetMapper, get_detection_dataset_dicts
from detectron2.data import detection_utils as utils
from detectron2.layers import cat
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from scratchdet.data import register_coco_dataset
from scratchdet.engine import load_config
from scratchdet.evaluation import filter_by_score, score_floor
from scratchdet.sampling_free import (
    FCOSPointRule,
    PointCounter,
    PriorCounts,
    SamplingFreeFCOS,
    count_dataset,
    initialize_priors,
    prior_heads,
)
from scratchdet.sampling_free.initialize import _prior_inputs
from scratchdet.sampling_free.prior import load_or_count, prior_fingerprint, resize_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SF_FCOS_DEMO = os.path.join(REPO, "configs", "shapes",
                            "sampling_free_fcos_root_resnet18_fpn_demo.py")
SF_FCOS_COCO = os.path.join(REPO, "configs", "COCO", "sampling_free_fcos_R_50_FPN_1x.py")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sf_demo():
    """(cfg, model, counts): the shapes Sampling-Free FCOS with its prior counted on the
    shapes val split."""
    cfg = load_config(SF_FCOS_DEMO)
    cfg.dataloader.train.dataset.names = "scratchdet_shapes_val"
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    counts = initialize_priors(cfg, model, progress=False)
    return cfg, model, counts


def _labels(model, grid, boxes, classes, size):
    """Detectron2's own FCOS labels ((R,) in 0..K, K background) of one image of ``size``
    on the anchor grid ``grid`` ((H_l, W_l) per level)."""
    anchors = [Boxes(a) for a in model.anchor_generator._grid_anchors([list(g) for g in grid])]
    inst = Instances(size, gt_boxes=Boxes(torch.as_tensor(boxes, dtype=torch.float32)),
                     gt_classes=torch.as_tensor(classes, dtype=torch.int64))
    with torch.no_grad():
        return model.label_anchors(anchors, [inst])[0][0]


def _fg_and_classes(labels, k):
    fg = labels != k
    return int(fg.sum()), np.bincount(labels[fg].numpy(), minlength=k)


# -- the counter ----------------------------------------------------------------------------
@pytest.mark.parametrize("radius", [1.5, 1.3, 2.7])
def test_point_counter_equals_label_anchors_on_random_boxes_with_area_ties(sf_demo, radius):
    """Random boxes (inside, across and beyond the image edge, tiny to larger than the
    image), exact duplicates of other classes, and pairs whose float32 keys 1e8 - area tie
    although their areas differ: the first box of a tie takes the location, as
    ``max(dim=0)`` decides. Counts and per-class counts equal ``label_anchors``, for
    Detectron2's centre-sampling radius and others (float32(radius) x stride)."""
    import copy

    model = copy.deepcopy(sf_demo[1])
    model.center_sampling_radius = radius
    k = model.num_classes
    (_, gen, rule, _, _), = prior_heads(model)
    counter = rule.make_counter(gen, k, model.backbone.size_divisibility)
    rng = np.random.RandomState(0)
    items, refs = [], []
    for _ in range(60):
        h, w = rng.randint(40, 400), rng.randint(40, 400)
        n = rng.randint(0, 12)
        xy = rng.uniform(-20, [w, h], (n, 2))
        wh = np.exp(rng.uniform(0, np.log(max(h, w)) + 0.3, (n, 1))) * \
            np.exp(rng.uniform(-0.7, 0.7, (n, 2)))
        boxes = np.concatenate([xy, xy + wh], 1)
        classes = rng.randint(0, k, n)
        if n >= 2:  # an exact duplicate of another class
            boxes[1], classes[1] = boxes[0], (classes[0] + 1) % k
        items.append(counter.make_item(boxes, classes, h, w))
    # area ties: 50 x 40.06 (area 2003) and 40 x 50 (area 2000), same centre: the keys
    # 1e8 - 2003 and 1e8 - 2000 round to the same float32, so the first box takes the
    # locations both claim, whichever is smaller; the same boxes in both orders
    tie = np.array([[35, 39.97, 85, 80.03], [40, 35, 80, 85]], np.float64)
    for order in ([0, 1], [1, 0]):
        items.append(counter.make_item(tie[order], np.array(order), 128, 128))
    f32 = items[-1].boxes
    area = (f32[:, 2] - f32[:, 0]) * (f32[:, 3] - f32[:, 1])
    assert area[0] != area[1] and np.float32(1e8) - area[0] == np.float32(1e8) - area[1]
    for it in items:
        refs.append(_fg_and_classes(_labels(model, it.grid, it.boxes, it.classes, (1, 1)), k))
    fg, valid, per_class = counter.count_items(items)
    assert fg.tolist() == [r[0] for r in refs] and fg.sum() > 100
    assert per_class.tolist() == sum(r[1] for r in refs).tolist()
    assert valid.tolist() == [sum(h * w for h, w in it.grid) for it in items]
    assert refs[-1][0] == refs[-2][0] and refs[-1][1].tolist() != refs[-2][1].tolist(), \
        "the order of tied boxes decides the classes"


def _mini_train_dicts(coco_mini):
    """coco_mini's train split as Detectron2's train loader reads it (empty images dropped)."""
    register_coco_dataset("coco_mini_train", os.path.join(coco_mini, "annotations",
                                                          "instances_train2017.json"),
                          os.path.join(coco_mini, "train2017"))
    return get_detection_dataset_dicts(["coco_mini_train"], filter_empty=True)


def _label_anchors_counts(model, dicts, sizes, monkeypatch):
    """fg, all locations and per-class fg of Detectron2's FCOS ``label_anchors`` on every
    image of ``dicts`` at every short side of ``sizes`` (max 1333), through Detectron2's
    train mapper (no flip), each image padded on its own to the size divisibility."""
    read = utils.read_image
    cache = {}
    monkeypatch.setattr(utils, "read_image", lambda f, format=None: cache.setdefault(
        f, read(f, format=format)))  # each image decoded once, resized at every size
    k = model.num_classes
    fg = valid = 0
    per_class = np.zeros(k, np.int64)
    div = model.backbone.size_divisibility
    strides = model.anchor_generator.strides
    for s in sizes:
        mapper = DatasetMapper(is_train=True, augmentations=[T.ResizeShortestEdge(s, 1333)],
                               image_format="BGR")
        for d in dicts:
            inst = mapper(dict(d))["instances"]
            h, w = (-(-x // div) * div for x in inst.image_size)
            grid = [(-(-h // st), -(-w // st)) for st in strides]
            labels = _labels(model, grid, inst.gt_boxes.tensor, inst.gt_classes, inst.image_size)
            f, pc = _fg_and_classes(labels, k)
            fg, valid, per_class = fg + f, valid + len(labels), per_class + pc
    return fg, valid, per_class


def test_counts_equal_label_anchors_on_coco_mini_through_the_train_mapper(coco_mini, monkeypatch):
    """The R50 FCOS config's counter on real COCO images at three of its training
    scales equals Detectron2's FCOS labels of the mapper's instances (the feature grid
    checked against the backbone's on one image)."""
    cfg = load_config(SF_FCOS_COCO)
    model = instantiate(cfg.model).eval()
    dicts = _mini_train_dicts(coco_mini)[:8]
    (_, gen, rule, _, _), = prior_heads(model)
    assert isinstance(rule, FCOSPointRule)
    counter = rule.make_counter(gen, 80, model.backbone.size_divisibility)
    assert isinstance(counter, PointCounter)
    sizes = (640, 704, 800)
    fg, valid, per_class = _label_anchors_counts(model, dicts, sizes, monkeypatch)
    c = count_dataset(dicts, counter, [T.ResizeShortestEdge(sizes, 1333, "choice")], 80,
                      progress=False)
    assert (c.num_foreground, c.num_valid) == (fg, valid) and fg > 1000
    assert c.per_class == per_class.tolist()
    # the counter's grid is the backbone's on a padded image
    h, w = resize_options([T.ResizeShortestEdge(800, 1333)], dicts[0]["height"],
                          dicts[0]["width"])[0][0]
    x = torch.zeros(1, 3, -(-h // 32) * 32, -(-w // 32) * 32)
    with torch.no_grad():
        feats = model.backbone(x)
    assert [tuple(feats[f].shape[-2:]) for f in model.head_in_features] == \
        list(counter.grid_sizes(h, w))


def test_estimate_prior_tool_on_coco_2017_train_equals_label_anchors(coco_mini, tmp_path,
                                                                     monkeypatch):
    """Acceptance: ``tools/estimate_prior.py --config-file`` the R50 Sampling-Free FCOS
    config, on coco_mini laid out as Detectron2's ``coco_2017_train``
    (``DETECTRON2_DATASETS``), counted by two processes (shards summed), equals
    Detectron2's FCOS ``label_anchors`` over the same images (empty ones filtered as
    the loader filters them) at the config's six training scales, to the location."""
    root = tmp_path / "datasets"
    (root / "coco" / "annotations").mkdir(parents=True)
    os.symlink(os.path.join(coco_mini, "annotations", "instances_train2017.json"),
               root / "coco" / "annotations" / "instances_train2017.json")
    os.symlink(os.path.join(coco_mini, "train2017"), root / "coco" / "train2017")
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(REPO, "tools", "estimate_prior.py"),
                        "--num-gpus", "2", "--quiet", "--no-cache", "--config-file", SF_FCOS_COCO],
                       capture_output=True, text=True, timeout=600, cwd=str(tmp_path), env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["head"] == "fcos"

    cfg = load_config(SF_FCOS_COCO)
    model = instantiate(cfg.model).eval()
    (resize, _flip) = instantiate(cfg.dataloader.train.mapper.augmentations)
    sizes = tuple(int(s) for s in resize.short_edge_length)
    assert sizes == (640, 672, 704, 736, 768, 800) and resize.max_size == 1333
    dicts = _mini_train_dicts(coco_mini)
    fg, valid, per_class = _label_anchors_counts(model, dicts, sizes, monkeypatch)
    assert out["num_images"] == len(dicts) > 0
    assert (out["num_foreground"], out["num_anchors_counted"]) == (fg, valid)
    assert out["per_class_prior"] == [c / valid for c in per_class.tolist()]
    assert out["prior"] == fg / valid / 80
    print(f"coco_mini FCOS R50 prior {out['prior']:.4g} ({fg} of {valid} locations)")


def test_fingerprints_iou_path_unchanged_point_rule_keyed(coco_mini, tmp_path, monkeypatch):
    """The IoU path's fingerprints are those from before counters took a rule (caches
    stay valid); the point rule's parameters (radius, size range) are in its key; its
    counts are cached and reused like the IoU path's."""
    dicts = [dict(height=480, width=640, annotations=[
        dict(bbox=[1.0, 2.0, 30.0, 40.0], bbox_mode=1, category_id=3)])]
    expected = {"COCO/sampling_free_retinanet_R_50_FPN_1x.py": {"retinanet": "d9b329783742d4f1"},
                "COCO/sampling_free_faster_rcnn_R_50_FPN_1x.py": {"rpn": "334057b89b569866"}}
    for config, fps in expected.items():
        cfg = load_config(os.path.join(REPO, "configs", config))
        names, ds, augs, counters = _prior_inputs(cfg, instantiate(cfg.model), dicts)
        assert {n: prior_fingerprint(names, ds, c, augs, hc) for n, (c, hc) in counters.items()} \
            == fps
    cfg = load_config(SF_FCOS_DEMO)
    model = instantiate(cfg.model)
    (_, gen, rule, _, _), = prior_heads(model)
    keys = {prior_fingerprint("d", dicts, FCOSPointRule(*r).make_counter(gen, 3), [], 3)
            for r in [(1.5,), (2.5,), (1.5, 3.0), (1.5, 4.0, 6.0)]}
    assert len(keys) == 4
    monkeypatch.setenv("SCRATCHDET_CACHE", str(tmp_path))
    counter = rule.make_counter(gen, 3)
    a, hit = load_or_count("d", dicts * 2, counter, [], 3, progress=False)
    b, hit2 = load_or_count("d", dicts * 2, rule.make_counter(gen, 3), [], 3, progress=False)
    assert (hit, hit2) == (False, True) and a.to_dict() == b.to_dict() and a.num_foreground > 0


# -- the model ------------------------------------------------------------------------------
def _spy_losses(model):
    """Record the arguments of every ``model.losses`` call."""
    calls = []
    orig = model.losses

    def spy(*args):
        calls.append(args)
        return orig(*args)

    model.losses = spy
    return calls


def _batch(h=160, w=160, boxes=((20.0, 30.0, 90.0, 100.0), (100.0, 60.0, 150.0, 140.0))):
    img = torch.rand(3, h, w) * 255
    full = Instances((h, w), gt_boxes=Boxes(torch.tensor(boxes)),
                     gt_classes=torch.tensor([0, 2])[: len(boxes)])
    empty = Instances((h, w), gt_boxes=Boxes(torch.zeros(0, 4)),
                      gt_classes=torch.zeros(0, dtype=torch.int64))
    return dict(image=img, instances=full), dict(image=img.clone(), instances=empty)


def test_bce_over_every_location_guided_to_the_giou_loss(sf_demo):
    """No sampling: the unscaled classification loss is the BCE summed over every
    location and class of the padded batch, over Detectron2's FCOS normaliser; box and
    centerness losses are Detectron2's own; loss_fcos_cls = 1.0 x loss_fcos_loc, with
    the plain BCE gradient times the detached ratio."""
    import copy

    cfg, model, _ = sf_demo
    model = copy.deepcopy(model).train()
    stock = copy.deepcopy(model)
    calls = _spy_losses(model)
    full, empty = _batch()
    with EventStorage(0) as storage:
        losses = model([full, empty])
    anchors, logits, gt_labels, deltas, gt_boxes, ctr = calls[0]
    num_locations = sum(len(a) for a in anchors)
    assert cat(logits, 1).shape == (2, num_locations, 3)
    assert num_locations == sum(h * w for h, w in [(40, 40), (20, 20), (10, 10), (5, 5), (3, 3)])
    labels = torch.stack(gt_labels)
    num_pos = int((labels != 3).sum())
    assert num_pos > 0 and (labels[1] == 3).all()
    normalizer = 0.9 * 300 + 0.1 * num_pos  # Detectron2's EMA, first step
    target = F.one_hot(labels, 4)[..., :3].float()
    x = cat(logits, 1).detach().double()
    hand = (torch.clamp(x, min=0) - x * target + torch.log1p(torch.exp(-x.abs()))).sum()
    unscaled = storage.history("loss_cls_unscaled").latest()
    assert unscaled == pytest.approx(float(hand) / normalizer, rel=1e-5)
    assert losses["loss_fcos_cls"].item() == pytest.approx(losses["loss_fcos_loc"].item(), rel=1e-6)
    # box and centerness losses, and their normaliser, as Detectron2's FCOS computes them
    with EventStorage(0):
        ref = FCOS.losses(stock, *calls[0])
    for k in ("loss_fcos_loc", "loss_fcos_ctr"):
        assert losses[k].item() == pytest.approx(ref[k].item(), rel=1e-6), k
    # the gradient is the BCE gradient times the detached ratio loss_loc / loss_cls
    g = torch.autograd.grad(losses["loss_fcos_cls"], logits[0], retain_graph=True)[0]
    ratio = losses["loss_fcos_loc"].item() / unscaled
    bce_grad = (torch.sigmoid(logits[0]) - target[:, : logits[0].shape[1]]) / normalizer
    torch.testing.assert_close(g, bce_grad * ratio, rtol=1e-4, atol=1e-9)


def test_refuses_without_prior_trains_on_empty_images_and_batches(sf_demo):
    cfg, model, _ = sf_demo
    fresh = instantiate(cfg.model).train()
    full, empty = _batch()
    with EventStorage(0), pytest.raises(RuntimeError, match="prior is not set"):
        fresh([full])
    model.train()
    for batch in ([full, empty], [empty, empty]):
        with EventStorage(0):
            losses = model(batch)
            sum(losses.values()).backward()
        assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
        assert all(torch.isfinite(v) for v in losses.values()), losses
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()
    model.eval()


def test_bias_thresholds_and_checkpoint(sf_demo, tmp_path):
    """Bias = logit(prior) counted with the point rule; thresholds (prior x C) are used
    at inference and travel in the checkpoint's buffers."""
    cfg, model, counts = sf_demo
    p = counts["fcos"].prior
    assert 1e-4 < p < 1e-1
    b = model.head.cls_score.bias.double()
    assert torch.allclose(torch.sigmoid(b), torch.full_like(b, p))
    assert torch.allclose(model.score_thresholds().double(), torch.full((3,), 3 * p).double())
    DetectionCheckpointer(model, str(tmp_path)).save("m")
    fresh = instantiate(cfg.model).eval()
    assert not fresh.prior_state.is_set
    DetectionCheckpointer(fresh).load(str(tmp_path / "m.pth"))
    assert torch.equal(fresh.score_thresholds(), model.score_thresholds())
    assert fresh.prior_state.fingerprint == counts["fcos"].fingerprint != ""


def _canonical(inst):
    keys = torch.cat([inst.scores[:, None].double(), inst.pred_classes[:, None].double(),
                      inst.pred_boxes.tensor.double()], dim=1)
    order = sorted(range(len(inst)), key=lambda i: tuple(keys[i].tolist()))
    return inst[torch.as_tensor(order, dtype=torch.long)]


@pytest.mark.parametrize("per_class", [False, True])
def test_one_pass_floor_filtered_equals_a_pass_at_the_threshold(sf_demo, per_class):
    """Detections at a score floor, filtered at the adaptive thresholds, are exactly
    those of a pass at the thresholds (top-k, per-class NMS and the cap keep the highest
    scores), global and per-class; the thresholds apply to Detectron2's FCOS score
    sqrt(cls x centerness)."""
    import copy

    cfg, model, _ = sf_demo
    model = copy.deepcopy(model).eval()
    model.prior_state.set(PriorCounts(num_classes=3, num_foreground=3 * 90, num_valid=1000,
                                      per_class=[1, 2, 3]))
    if per_class:
        model.prior_state.set_rule("per_class")
    thr = model.score_thresholds().clone()
    g = torch.Generator().manual_seed(0)
    x = [dict(image=torch.rand(3, 160, 160, generator=g) * 255, height=160, width=160)]
    # scores spread around the thresholds (larger prediction weights, norm statistics of
    # this input as a trained model's, sigmoid(classification bias) at the squared mean
    # threshold: the score is sqrt(cls x centerness)), and boxes that NMS keeps apart
    with torch.no_grad():
        model.head.cls_score.weight.mul_(30)
        model.head.ctrness.weight.mul_(30)
        model.head.cls_score.bias.fill_(float(torch.logit(thr.mean() ** 2)))
        model.head.bbox_pred.bias.fill_(1.0)  # boxes of 2 strides, not empty
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        model.backbone(model.preprocess_image(x).tensor)
        model.head([model.backbone(model.preprocess_image(x).tensor)[f]
                    for f in model.head_in_features])
        model.eval()
    # the per-image cap: reached at the floor, not at the thresholds; with per-class
    # thresholds not reached (the floor pass's cap keeps the highest scores of all
    # classes, which per-class thresholds would rank otherwise: see score_floor)
    model.max_detections_per_image = 2000 if per_class else 1000
    with torch.no_grad():
        direct = model(x)[0]["instances"]
        with score_floor(model, thr * 0.3):
            raw = model(x)[0]["instances"]
    print(f"{len(raw)} detections at the floor, {len(direct)} at the thresholds")
    assert len(raw) > len(direct) >= 5
    assert (direct.scores > thr[direct.pred_classes]).all()
    a, b = _canonical(filter_by_score(raw, thr)), _canonical(direct)
    assert len(a) == len(b)
    assert torch.equal(a.pred_classes, b.pred_classes) and torch.equal(a.scores, b.scores)
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_yacs_builds_sampling_free_fcos_with_detectron2_defaults():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from scratchdet import add_scratchdet_config

    cfg = add_scratchdet_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs", "shapes",
                                     "sampling_free_fcos_root_resnet18_fpn_demo.yaml"))
    m = build_model(cfg)
    assert isinstance(m, SamplingFreeFCOS) and m.guided_loss.scale == 1.0
    assert (m.center_sampling_radius, m.test_nms_thresh, m.test_score_thresh) == (1.5, 0.6, 0.2)
    f = add_scratchdet_config(get_cfg()).MODEL.FCOS
    assert (f.NORM, f.NUM_CONVS, f.PRIOR_PROB, f.TOPK_CANDIDATES_TEST) == ("GN", 4, 0.01, 1000)
