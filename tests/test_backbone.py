"""Root-ResNet family: shapes, strides, SSD maps, from-scratch init and gradients."""
import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7

from scratchdet import add_scratchdet_config
from scratchdet.backbone import (
    DOWNSAMPLING_STUDY,
    RootResNet,
    RootStem,
    SSDBackbone,
    ssd_extra_layout,
)

torch.manual_seed(0)


def _narrow(depth=18, **kw):
    kw.setdefault("stem_channels", 8)
    kw.setdefault("res2_out_channels", 8 if depth < 50 else 32)
    return RootResNet(depth=depth, **kw)


@pytest.mark.parametrize("depth,block_mult", [(18, 1), (34, 1), (50, 4), (101, 4)])
def test_root_resnet_shapes_and_strides(depth, block_mult):
    m = _narrow(depth)
    x = torch.randn(2, 3, 64, 96)
    out = m(x)
    # root (stride 1) + 2x2 max-pool: res2..res5 at strides 2, 4, 8, 16
    expect_strides = {"res2": 2, "res3": 4, "res4": 8, "res5": 16}
    res2 = 8 if depth < 50 else 32
    for i, (name, s) in enumerate(expect_strides.items()):
        assert m.output_shape()[name].stride == s
        assert m.output_shape()[name].channels == res2 * 2**i
        assert out[name].shape == (2, res2 * 2**i, 64 // s, 96 // s)


def test_root_stem_is_three_3x3_stride1_convs_with_bn():
    stem = RootStem(3, 64)
    convs = [m for m in stem.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3
    assert all(c.kernel_size == (3, 3) and c.stride == (1, 1) for c in convs)
    assert all(c.bias is None for c in convs)  # followed by BN
    assert sum(isinstance(m, nn.BatchNorm2d) for m in stem.modules()) == 3
    assert stem(torch.randn(1, 3, 32, 32)).shape == (1, 64, 32, 32)  # no pool by default


@pytest.mark.parametrize(
    "study,stem_stride", [("resnet18", 4), ("no_maxpool", 2), ("conv1_stride1", 1),
                          ("root_resnet18", 1)])
def test_downsampling_study_settings(study, stem_stride):
    m = _narrow(18, **DOWNSAMPLING_STUDY[study])
    out = m(torch.randn(1, 3, 64, 64))
    for k, name in enumerate(["res2", "res3", "res4", "res5"]):
        s = stem_stride * 2**k
        assert m.output_shape()[name].stride == s
        assert out[name].shape[-2:] == (64 // s, 64 // s)
    kernels = [c.kernel_size[0] for c in m.stem.convs]
    assert kernels == ([3, 3, 3] if study == "root_resnet18" else [7])


def test_norm_choices_and_init():
    for norm in ["BN", "GN", "SyncBN", ""]:
        m = _narrow(18, norm=norm, stem_channels=32, res2_out_channels=32)
        assert torch.isfinite(m(torch.randn(2, 3, 32, 32))["res5"]).all()
    plain = _narrow(18, norm="")
    assert all(c.bias is not None for c in plain.stem.convs)  # no norm: convs get a bias
    m = _narrow(18)
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    assert bns and all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    assert all(p.requires_grad for p in m.parameters())  # freeze_at=0
    z = _narrow(18, zero_init_residual=True)
    assert torch.all(z.res2[0].conv2.norm.weight == 0)
    assert torch.all(z.res2[0].conv1.norm.weight == 1)
    # freezing still works as in Detectron2
    f = _narrow(18, freeze_at=2)
    assert not any(p.requires_grad for p in f.stem.parameters())
    assert not any(p.requires_grad for p in f.res2.parameters())
    assert all(p.requires_grad for p in f.res3.parameters())


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="depth=42"):
        RootResNet(depth=42)
    with pytest.raises(ValueError, match="avg"):
        RootStem(3, 8, pool="avg")


def _assert_all_params_get_grad(model, out):
    loss = sum(v.float().pow(2).mean() for v in out.values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_gradients_reach_every_parameter_bare_fpn_ssd():
    bare = _narrow(18)
    _assert_all_params_get_grad(bare, bare(torch.randn(2, 3, 64, 64)))

    fpn = FPN(bottom_up=_narrow(18, out_features=["res3", "res4", "res5"]),
              in_features=["res3", "res4", "res5"], out_channels=16, norm="BN",
              top_block=LastLevelP6P7(16, 16, in_feature="p4"))
    _assert_all_params_get_grad(fpn, fpn(torch.randn(2, 3, 64, 64)))

    ssd = SSDBackbone(_narrow(18, out_features=["res4", "res5"]),
                      extra_channels=[8, 8, 8, 8])
    _assert_all_params_get_grad(ssd, ssd(torch.randn(2, 3, 300, 300)))


def test_fpn_levels_names_and_strides():
    fpn = FPN(bottom_up=_narrow(18, out_features=["res3", "res4", "res5"]),
              in_features=["res3", "res4", "res5"], out_channels=16, norm="BN",
              top_block=LastLevelP6P7(16, 16, in_feature="p4"))
    out = fpn(torch.randn(1, 3, 128, 128))
    assert {k: v.stride for k, v in fpn.output_shape().items()} == \
        {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    for k, v in out.items():
        s = fpn.output_shape()[k].stride
        assert v.shape == (1, 16, 128 // s, 128 // s)


def test_ssd300_maps_are_38_19_10_5_3_1():
    assert ssd_extra_layout(4) == [(2, 1), (2, 1), (1, 0), (1, 0)]
    ssd = SSDBackbone(RootResNet(depth=34, stem_channels=8, res2_out_channels=8,
                                 out_features=["res4", "res5"]))
    ssd.eval()
    with torch.no_grad():
        out = ssd(torch.randn(1, 3, 300, 300))
    sizes = [out[f].shape[-1] for f in ssd._out_features]
    assert sizes == [38, 19, 10, 5, 3, 1]
    assert [out[f].shape[-2] for f in ssd._out_features] == [38, 19, 10, 5, 3, 1]
    assert [out[f].shape[1] for f in ssd._out_features] == [32, 64, 128, 128, 128, 128]


@pytest.mark.parametrize("study", sorted(DOWNSAMPLING_STUDY))
@pytest.mark.parametrize("first_stride,size,maps", [(8, 300, [38, 19, 10, 5, 3, 1]),
                                                    (4, 160, [40, 20, 10, 5, 3, 1])])
def test_ssd_maps_for_every_study_stem(study, first_stride, size, maps):
    """The paper-scale study (ScratchDet300, first map at stride 8) and the CPU-scale one
    (160 px shapes, first map at stride 4) keep their six map sizes whatever the stem."""
    from detectron2.config import LazyConfig, instantiate

    from scratchdet.backbone import apply_ssd_downsampling_study

    cfg = LazyConfig.load("configs/common/models/scratchdet_ssd300.py")
    cfg.model.backbone.bottom_up.stem_channels = 4
    cfg.model.backbone.bottom_up.res2_out_channels = 4
    cfg.model.backbone.extra_channels = [8] * 4
    stages = apply_ssd_downsampling_study(cfg.model, study, first_stride=first_stride)
    ssd = instantiate(cfg.model.backbone).eval()
    assert ssd._out_features == cfg.model.head_in_features and stages[-1] == "res5"
    with torch.no_grad():
        out = ssd(torch.randn(1, 3, size, size))
    assert [out[f].shape[-1] for f in ssd._out_features] == maps
    assert [out[f].shape[1] for f in ssd._out_features] == \
        [s.channels for s in cfg.model.head.input_shape]


def test_registered_backbones_build_from_yacs():
    cfg = add_scratchdet_config(get_cfg())
    cfg.MODEL.BACKBONE.FREEZE_AT = 0  # from scratch, as the YAML bases set it
    cfg.MODEL.ROOT_RESNET.DEPTH = 18
    cfg.MODEL.ROOT_RESNET.STEM_OUT_CHANNELS = 8
    cfg.MODEL.ROOT_RESNET.RES2_OUT_CHANNELS = 8
    cfg.MODEL.ROOT_RESNET.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.FPN.NORM = "BN"
    shape = ShapeSpec(channels=3)
    x = torch.randn(1, 3, 128, 128)
    expected = {
        "build_root_resnet_backbone": {"res3": 4, "res4": 8, "res5": 16},
        "build_root_resnet_fpn_backbone": {"p2": 4, "p3": 8, "p4": 16, "p5": 32},
        "build_root_resnet_retinanet_fpn_backbone": {"p2": 4, "p3": 8, "p4": 16, "p5": 32,
                                                     "p6": 64},
    }
    for name, strides in expected.items():
        cfg.MODEL.BACKBONE.NAME = name
        bb = build_backbone(cfg, shape)
        assert {k: v.stride for k, v in bb.output_shape().items()} == strides, name
        assert all(p.requires_grad for p in bb.parameters()), name
        out = bb(x)
        assert all(out[k].shape[-1] == 128 // s for k, s in strides.items())
    cfg.MODEL.BACKBONE.NAME = "build_root_resnet_ssd_backbone"
    cfg.MODEL.ROOT_RESNET.OUT_FEATURES = ["res4", "res5"]
    bb = build_backbone(cfg, shape).eval()
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 300, 300))
    assert [v.shape[-1] for v in out.values()] == [38, 19, 10, 5, 3, 1]
