"""ScratchDet RetinaNet-style detector: Root-ResNet-34 + FPN (BN) + RetinaNet head (BN).

From random initialisation: no ``init_checkpoint``, BatchNorm in backbone, FPN and head
(per-level statistics, Detectron2's ``RetinaNetHead(norm="BN")``), nothing frozen.
The Root-ResNet stem with its 2x2 max-pool puts res3/res4/res5 at strides 4/8/16, so
the FPN levels are p2..p4 plus p5/p6 from the P6P7 top block (strides 4..64).
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

from scratchdet.backbone import RootResNet

model = L(RetinaNet)(
    backbone=L(FPN)(
        bottom_up=L(RootResNet)(
            depth=34,
            stem_channels=64,
            stem_convs=3,
            stem_kernel=3,
            stem_stride=1,
            stem_pool="max2x2",
            norm="BN",
            out_features=["res3", "res4", "res5"],
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        norm="BN",
        top_block=L(LastLevelP6P7)(in_channels=256, out_channels=256, in_feature="p4"),
    ),
    head=L(RetinaNetHead)(
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes="${..num_classes}",
        conv_dims=[256, 256, 256, 256],
        norm="BN",
        prior_prob=0.01,
        num_anchors=9,
    ),
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [16, 32, 64, 128, 256]],
        aspect_ratios=[0.5, 1.0, 2.0],
        strides=[4, 8, 16, 32, 64],
        offset=0.0,
    ),
    box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
    anchor_matcher=L(Matcher)(
        thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=True
    ),
    num_classes=80,
    head_in_features=["p2", "p3", "p4", "p5", "p6"],
    focal_loss_alpha=0.25,
    focal_loss_gamma=2.0,
    # inputs are normalised per channel; BN everywhere makes the exact values uncritical
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[57.375, 57.120, 58.395],
    input_format="BGR",
)
