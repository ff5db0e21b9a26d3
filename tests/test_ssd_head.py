"""SSD head and anchors (the MultiBox loss and the meta-architecture: test_multibox.py)."""
import math

import pytest
import torch

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec

from scratchdet.modeling import SSDAnchorGenerator, SSDHead, ssd_num_anchors

RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]


def test_ssd_anchor_counts_sizes_and_centres():
    gen = SSDAnchorGenerator(min_sizes=[30, 60, 111, 162, 213, 264],
                             max_sizes=[60, 111, 162, 213, 264, 315], aspect_ratios=RATIOS,
                             strides=[8, 16, 32, 64, 100, 300])
    assert gen.num_cell_anchors == [4, 6, 6, 6, 4, 4] == ssd_num_anchors(RATIOS)
    feats = [torch.zeros(1, 1, s, s) for s in [38, 19, 10, 5, 3, 1]]
    anchors = gen(feats)
    assert [len(a) for a in anchors] == [38 * 38 * 4, 19 * 19 * 6, 100 * 6, 25 * 6, 9 * 4, 4]
    cell = list(gen.cell_anchors)[0]
    wh = torch.stack([cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]], 1)
    expect = [(30, 30), (math.sqrt(1800),) * 2, (30 * math.sqrt(2), 30 / math.sqrt(2)),
              (30 / math.sqrt(2), 30 * math.sqrt(2))]
    assert torch.allclose(wh, torch.tensor(expect), atol=1e-4)
    # last level: one location centred in a 300x300 image
    c = anchors[5].get_centers()
    assert torch.allclose(c, torch.full_like(c, 150.0))
    # first level: centres at (i + 0.5) * 8
    c0 = anchors[0].get_centers()[::4]
    assert torch.allclose(c0[:3, 0], torch.tensor([4.0, 12.0, 20.0]))


def test_ssd_head_shapes_and_bias():
    shapes = [ShapeSpec(channels=c) for c in [8, 16, 4, 4, 4, 4]]
    head = SSDHead(input_shape=shapes, num_classes=5, num_anchors=ssd_num_anchors(RATIOS))
    feats = [torch.randn(2, s.channels, n, n) for s, n in zip(shapes, [38, 19, 10, 5, 3, 1])]
    logits, deltas = head(feats)
    for lg, dl, a, n in zip(logits, deltas, ssd_num_anchors(RATIOS), [38, 19, 10, 5, 3, 1]):
        assert lg.shape == (2, a * 5, n, n) and dl.shape == (2, a * 4, n, n)
    b = -math.log(99.0)
    assert all(torch.allclose(p, torch.full_like(p, b)) for p in head.cls_bias_params())
    assert all(isinstance(m[-1], torch.nn.BatchNorm2d) for m in head.cls_convs)


@pytest.mark.parametrize("norm, layer", [("BN", torch.nn.BatchNorm2d),
                                         ("SyncBN", torch.nn.SyncBatchNorm),
                                         ("FrozenBN", FrozenBatchNorm2d), ("", None)])
def test_ssd_head_norm_is_detectron2s(norm, layer):
    """Detectron2's get_norm names: a bias-free conv followed by the norm, whose bias is the
    prediction's; "" gives plain convs with bias (SSD's head)."""
    shapes = [ShapeSpec(channels=4), ShapeSpec(channels=8)]
    head = SSDHead(input_shape=shapes, num_classes=3, num_anchors=[4, 6], norm=norm,
                   loss="multibox")
    for convs in (head.cls_convs, head.box_convs):
        for m in convs:
            if layer is None:
                assert isinstance(m, torch.nn.Conv2d) and m.bias is not None
            else:
                assert isinstance(m[0], torch.nn.Conv2d) and m[0].bias is None
                assert type(m[1]) is layer and m[1].num_features == m[0].out_channels
    assert [p.shape[0] for p in head.cls_bias_params()] == [4 * 4, 6 * 4]
    assert all((p == 0).all() for p in head.cls_bias_params())


def test_ssd_head_bad_norm_names_the_key():
    with pytest.raises(ValueError, match=r"norm='BatchNorm'.*MODEL\.SSD\.HEAD_NORM"):
        SSDHead(input_shape=[ShapeSpec(channels=4)], num_classes=3, num_anchors=[4],
                norm="BatchNorm")
