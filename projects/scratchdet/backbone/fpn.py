"""Root-ResNet + Detectron2's FPN, registered for yacs configs.

LazyConfig users compose the same thing directly:
``L(FPN)(bottom_up=L(RootResNet)(...), top_block=L(LastLevelP6P7)(...), norm="BN")``.

FPN names its outputs by stride (``p{log2 stride}``): with the SSD300 root (stem stride 2)
res3/res4/res5 sit at strides 4/8/16 and become p2/p3/p4, and a P6P7 top block adds p5/p6.
"""
from detectron2.modeling import BACKBONE_REGISTRY, ShapeSpec
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7

from .root_resnet import build_root_resnet_backbone

__all__ = [
    "build_root_resnet_fpn_backbone",
    "build_root_resnet_retinanet_fpn_backbone",
    "max_pool_top_block",
]


def max_pool_top_block(in_feature: str = "p5") -> LastLevelMaxPool:
    """Detectron2's :class:`LastLevelMaxPool` (one more level, stride 2 max-pool) on the
    FPN output ``in_feature``; its constructor fixes that to p5, where a Root-ResNet's
    last FPN level is p4. For LazyConfigs: ``L(max_pool_top_block)(in_feature="p4")``."""
    block = LastLevelMaxPool()
    block.in_feature = in_feature
    return block


def _last_level_name(bottom_up, in_features) -> str:
    """FPN names its outputs after their stride: the last one is p{log2(stride)}."""
    last = bottom_up.output_shape()[in_features[-1]].stride
    return "p{}".format(int(last).bit_length() - 1)


def _fpn(cfg, input_shape, top_block_factory):
    bottom_up = build_root_resnet_backbone(cfg, input_shape)
    in_features = cfg.MODEL.FPN.IN_FEATURES
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top_block = top_block_factory(bottom_up, in_features, out_channels)
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_root_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Root-ResNet FPN with a max-pool top level (for Faster R-CNN style detectors)."""

    def maxpool(bottom_up, in_features, out_channels):
        return max_pool_top_block(_last_level_name(bottom_up, in_features))

    return _fpn(cfg, input_shape, maxpool)


@BACKBONE_REGISTRY.register()
def build_root_resnet_retinanet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Root-ResNet FPN with P6/P7 computed from the last FPN level (RetinaNet style)."""

    def p6p7(bottom_up, in_features, out_channels):
        return LastLevelP6P7(out_channels, out_channels,
                             in_feature=_last_level_name(bottom_up, in_features))

    return _fpn(cfg, input_shape, p6p7)
