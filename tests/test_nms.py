"""Exact per-class NMS (scratchdet.sampling_free.nms): the kept boxes of a class depend only
on that class's candidates and the image size, so a pass at a score floor filtered at a
higher threshold is the pass at that threshold, also at the float32 rounding edge of the
IoU threshold; it traces; the Sampling-Free box head's inference is Detectron2's with it."""
import pytest
import torch
from torchvision.ops import box_iou, nms

from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import (
    fast_rcnn_inference,
    fast_rcnn_inference_single_image,
)
from detectron2.structures import Boxes, Instances

from scratchdet.evaluation import filter_by_score
from scratchdet.sampling_free import nms as nms_module
from scratchdet.sampling_free.nms import fast_rcnn_inference_exact, per_class_nms
from scratchdet.sampling_free.rcnn import SamplingFreeFastRCNNOutputLayers

pytestmark = pytest.mark.usefixtures("one_thread")

# (width, shift): box a = (20.1, 30.2, 20.1 + width, 75.9) and a shifted right by `shift`
# have an IoU within 3e-5 of 0.55, where float32 rounding of class-offset coordinates
# that grow with the largest coordinate present moves it across the threshold
EDGE_PAIRS = [(37.3, 10.829032258064514), (51.7, 15.00867741935484),
              (64.1, 18.609477419354835), (99.3, 28.82923225806451)]
SIZES = [(800, 1333), (1333, 800), (480, 640)]


def _edge_pair(width, shift):
    """(2, 4) float32 boxes whose IoU is within 3e-5 of 0.55."""
    a = torch.tensor([[20.1, 30.2, 20.1 + width, 30.2 + 45.7]])
    return torch.cat([a, a + torch.tensor([[shift, 0.0, shift, 0.0]])])


def _random(n, num_classes, size, seed):
    """n boxes of which many extend past the image, scores with many ties, classes:
    (n, 4) float32, (n,) float32, (n,) int64."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    scale = torch.tensor([w, h], dtype=torch.float32)
    xy = (torch.rand(n, 2, generator=g) * 1.4 - 0.2) * scale
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * scale * 0.3 + 2], dim=1)
    scores = torch.randint(1, 40, (n,), generator=g).float() / 40
    return boxes, scores, torch.randint(0, num_classes, (n,), generator=g)


def _reference(boxes, scores, classes, thr, size, clip=True):
    """Greedy NMS class by class on each class's own (clipped) float64 coordinates: kept
    indices by decreasing score, ties by index."""
    h, w = size
    clipped = boxes.double().clone()
    if clip:
        clipped[:, 0::2] = clipped[:, 0::2].clamp(0, w)
        clipped[:, 1::2] = clipped[:, 1::2].clamp(0, h)
    order = scores.sort(descending=True, stable=True)[1]
    keep = torch.zeros(len(boxes), dtype=torch.bool)
    for c in classes.unique():
        idx = order[classes[order] == c]
        rank = -torch.arange(1, len(idx) + 1, dtype=torch.float64)
        keep[idx[nms(clipped[idx], rank, thr)]] = True
    return order[keep[order]]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("n, k", [(300, 8), (2500, 80)])  # one nms call; on CPU class by class
def test_equals_greedy_nms_class_by_class_on_clipped_boxes(size, n, k):
    boxes, scores, classes = _random(n, k, size, seed=n)
    keep = per_class_nms(boxes, scores, classes, 0.5, size)
    assert torch.equal(keep, _reference(boxes, scores, classes, 0.5, size))
    assert 0 < len(keep) < n
    # by decreasing score, ties by index
    s = scores[keep]
    assert ((s[:-1] > s[1:]) | ((s[:-1] == s[1:]) & (keep[:-1] < keep[1:]))).all()


def test_one_call_and_class_by_class_keep_the_same_boxes(monkeypatch):
    boxes, scores, classes = _random(1500, 80, (800, 1333), seed=1)
    for k, (width, shift) in enumerate(EDGE_PAIRS):  # edge pairs in classes 76..79
        boxes = torch.cat([boxes, _edge_pair(width, shift)])
        scores = torch.cat([scores, torch.tensor([0.9, 0.8])])
        classes = torch.cat([classes, torch.tensor([76 + k] * 2)])
    kept = []
    for limit in (10 ** 9, 0):
        monkeypatch.setattr(nms_module, "CPU_ONE_CALL_MAX_BOXES", limit)
        kept.append(per_class_nms(boxes, scores, classes, 0.55, (800, 1333)))
    assert torch.equal(kept[0], kept[1])


@pytest.mark.parametrize("size", SIZES)
def test_a_class_keeps_the_same_boxes_whatever_the_other_classes(size):
    """The kept boxes of class 7 (candidates spilling out of the image, the edge pairs)
    are the same with and without other classes' candidates: random ones, huge ones,
    far away ones, ones wholly outside the image, and classes up to 999."""
    h, w = size
    own, own_scores, _ = _random(200, 1, size, seed=3)
    for width, shift in EDGE_PAIRS:
        own = torch.cat([own, _edge_pair(width, shift) + torch.rand(1) * 100])
        own_scores = torch.cat([own_scores, torch.tensor([0.99, 0.98])])
    others, other_scores, other_classes = _random(1000, 80, size, seed=4)
    extra = torch.tensor([[-1e4, -1e4, 1e5, 1e5], [w + 10.0, 0, w + 900, h], [0, h + 5.0, 40, h + 90],
                          [5e3, 5e3, 6e3, 7e3], [-900.0, -900, -10, -10], [w - 5.0, h - 5, 3 * w, 3 * h]])
    others = torch.cat([others, extra, extra])
    other_scores = torch.cat([other_scores, torch.ones(6), torch.full((6,), 0.5)])
    other_classes = torch.cat([other_classes, torch.tensor([6, 8, 0, 999, 998, 6]),
                               torch.full((6,), 500)])
    other_classes[other_classes == 7] = 9
    alone = per_class_nms(own, own_scores, torch.full((len(own),), 7), 0.55, size)
    g = torch.Generator().manual_seed(5)
    for subset in (torch.ones(len(others), dtype=torch.bool), torch.rand(len(others), generator=g) < 0.5,
                   torch.arange(len(others)) >= 1000):
        boxes = torch.cat([others[subset], own])
        scores = torch.cat([other_scores[subset], own_scores])
        classes = torch.cat([other_classes[subset], torch.full((len(own),), 7)])
        keep = per_class_nms(boxes, scores, classes, 0.55, size)
        mine = keep[classes[keep] == 7] - int(subset.sum())
        assert torch.equal(mine, alone)


@pytest.mark.parametrize("size", SIZES)
def test_boxes_of_different_classes_never_suppress_each_other(size):
    """The same boxes in each of 200 classes, among them ones covering and overhanging
    the image and ones crossing its right and bottom edges: all are kept."""
    h, w = size
    boxes = torch.tensor([[-100.0, -100, w + 500, h + 500], [w - 10.0, h - 10, w + 500, h + 500],
                          [0.0, 0, 10, 10], [w - 30.0, 0, w + 2000, 30], [0.0, h - 30, 30, h + 2000]])
    k = 200
    keep = per_class_nms(boxes.repeat(k, 1), torch.rand(5 * k), torch.arange(k).repeat_interleave(5),
                         0.5, size)
    assert len(keep) == 5 * k


@pytest.mark.parametrize("width, shift", EDGE_PAIRS)
@pytest.mark.parametrize("size", SIZES)
def test_filtering_commutes_with_the_nms_at_the_rounding_edge(width, shift, size):
    """Candidates above a floor, NMS, then filtered at t: the same indices as NMS of the
    candidates above t, with the edge pair as the class-79 candidates above t."""
    pair = _edge_pair(width, shift)
    iou = float(box_iou(pair[:1].double(), pair[1:].double()))
    assert abs(iou - 0.55) < 3e-5
    boxes, scores, classes = _random(600, 80, size, seed=6)
    scores = scores * 0.04  # all below t = 0.05
    boxes = torch.cat([boxes, pair, torch.tensor([[1000.0, 700, 1300, 790]])])
    scores = torch.cat([scores, torch.tensor([0.5, 0.3, 0.01])])
    classes = torch.cat([classes, torch.tensor([79, 79, 0])])
    floor = per_class_nms(boxes, scores, classes, 0.55, size)
    above = torch.where(scores > 0.05)[0]
    direct = above[per_class_nms(boxes[above], scores[above], classes[above], 0.55, size)]
    assert torch.equal(floor[scores[floor] > 0.05], direct)


def test_traced_nms_equals_eager_on_other_inputs():
    """Traced on one input with the image size as tensors; run on other counts, classes
    and image sizes (also across the CPU class-by-class switch and with no box), it
    gives the eager result with the size as ints."""
    def run(boxes, scores, classes, size):
        return per_class_nms(boxes, scores, classes, 0.55, (size[0], size[1]))

    b, s, c = _random(300, 20, (480, 640), seed=7)
    traced = torch.jit.trace(run, (b, s, c, torch.tensor([480, 640])), check_trace=False)
    for n, num_classes, size in [(2500, 90, (1333, 800)), (50, 3, (300, 1000)),
                                 (700, 80, (800, 1333)), (0, 1, (100, 100))]:
        b, s, c = _random(n, num_classes, size, seed=n)
        eager = per_class_nms(b, s, c, 0.55, size)
        assert torch.equal(traced(b, s, c, torch.tensor(size)), eager)
        assert torch.equal(eager, _reference(b, s, c, 0.55, size))


def test_unclipped_nms_is_greedy_nms_on_the_boxes_traced_or_not():
    """clip=False (ScratchDet300): greedy NMS per class on the unclipped boxes (far
    outside the image too), equal scores ranked by index; a trace on one input gives the
    eager result on others, where torchvision's batched_nms changes path under tracing."""
    def run(boxes, scores, classes, size):
        return per_class_nms(boxes, scores, classes, 0.45, (size[0], size[1]), clip=False)

    b, s, c = _random(300, 20, (300, 300), seed=8)
    traced = torch.jit.trace(run, (b, s, c, torch.tensor([300, 300])), check_trace=False)
    for n, num_classes, size in [(2500, 80, (300, 300)), (60, 3, (300, 300)), (0, 1, (9, 9))]:
        b, s, c = _random(n, num_classes, size, seed=n)
        b = b * 40 - 6000  # coordinates of an untrained SSD head: thousands of px outside
        eager = run(b, s, c, size)
        assert torch.equal(eager, _reference(b, s, c, 0.45, size, clip=False))
        assert torch.equal(traced(b, s, c, torch.tensor(size)), eager)


def _box_head_inputs(r, k, seed, agnostic=False):
    """(r, k * 4) (or (r, 4)) boxes partly outside a 480 x 640 image and (r, k + 1)
    softmax scores, one row non-finite."""
    b, _, _ = _random(r * (1 if agnostic else k), 1, (480, 640), seed)
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randn(r, k + 1, generator=g) * 3).softmax(dim=1)
    scores[3, 0] = float("nan")
    return b.reshape(r, -1), scores


@pytest.mark.parametrize("agnostic", [False, True])
def test_box_head_inference_is_detectron2_s_with_the_exact_nms(agnostic):
    boxes, scores = _box_head_inputs(300, 6, seed=8, agnostic=agnostic)
    for thresh, topk in [(0.05, 100), (1e-4, 50), (0.3, -1)]:
        ours, rows = fast_rcnn_inference_exact(boxes, scores, (480, 640), thresh, 0.5, topk)
        d2, d2_rows = fast_rcnn_inference_single_image(boxes, scores, (480, 640), thresh, 0.5, topk)
        assert len(ours) > 0 and ours.image_size == d2.image_size
        assert torch.equal(rows, d2_rows) and torch.equal(ours.pred_classes, d2.pred_classes)
        assert torch.equal(ours.scores, d2.scores)
        assert torch.equal(ours.pred_boxes.tensor, d2.pred_boxes.tensor)


def _predictor(num_classes, score_thresh=1e-4):
    return SamplingFreeFastRCNNOutputLayers(
        ShapeSpec(channels=16), box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
        num_classes=num_classes, test_score_thresh=score_thresh, test_nms_thresh=0.55,
        test_topk_per_image=100)


def test_box_predictor_inference_is_detectron2_s():
    torch.manual_seed(0)
    pred = _predictor(5).eval()
    proposals = []
    for size, seed in [((480, 640), 9), ((300, 200), 10)]:
        p = Instances(size)
        p.proposal_boxes = Boxes(_random(40, 1, size, seed)[0])
        proposals.append(p)
    with torch.no_grad():
        predictions = pred(torch.randn(80, 16) * 3)
        ours, rows = pred.inference(predictions, proposals)
        d2, d2_rows = fast_rcnn_inference(
            pred.predict_boxes(predictions, proposals), pred.predict_probs(predictions, proposals),
            [p.image_size for p in proposals], 1e-4, 0.55, 100)
    for a, b, ra, rb in zip(ours, d2, rows, d2_rows):
        assert len(a) > 0 and torch.equal(ra, rb)
        assert torch.equal(a.pred_classes, b.pred_classes) and torch.equal(a.scores, b.scores)
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


@pytest.mark.parametrize("width, shift", EDGE_PAIRS)
def test_box_head_filtering_commutes_at_the_rounding_edge(width, shift):
    """The box-head version of the dense rounding-edge test: the edge pair as class 79,
    a low-score class-0 box far away, every class of every box a candidate at the floor
    (Detectron2's batched_nms kept a different number of the pair on each of these four
    pairs with torchvision 0.29: its class offsets grew with the far box)."""
    pred = _predictor(80)
    boxes = torch.cat([_edge_pair(width, shift), torch.tensor([[1000.0, 1200, 1300, 1330]])])
    scores = torch.full((3, 81), 1e-9)
    scores[:, 80] = 0.1
    scores[0, 79], scores[1, 79], scores[2, 0] = 0.5, 0.3, 0.01

    def detect(thresh):
        pred.test_score_thresh = thresh  # as score_floor sets it: (K,) per class
        return pred.detect([boxes.repeat(1, 80)], [scores], [(1333, 1333)])[0][0]

    raw, direct = detect(torch.zeros(80)), detect(torch.full((80,), 0.05))
    assert len(raw) == 100 and (direct.pred_classes == 79).all() and 1 <= len(direct) <= 2
    kept = filter_by_score(raw, torch.full((80,), 0.05))
    assert torch.equal(kept.pred_boxes.tensor, direct.pred_boxes.tensor)
    assert torch.equal(kept.scores, direct.scores)
