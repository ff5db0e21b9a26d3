"""ScratchDet300: Root-ResNet-34 + SSD extra stages + SSD head with BN, from scratch.

Six prediction maps for a 300x300 input: res4 38x38, res5 19x19, then extra stages at
10, 5, 3 and 1 (BasicBlocks of 128 channels). SSD anchors (steps 8/16/32/64/100/300,
ratios {2}, {2,3}, {2,3}, {2,3}, {2}, {2}; sizes for VOC, the COCO config overrides
them), SSD matching at IoU 0.5 (each box's best anchor, then every anchor at 0.5), SSD's box
variances (0.1, 0.2) as Box2BoxTransform weights. The loss is SSD's MultiBox loss, as in
the paper and both of its releases: softmax cross-entropy over the classes and background
with 3 hard negatives per positive, smooth-L1 (beta 1) on the positives, both divided by
the positives; at test time softmax scores, score threshold 0.01, NMS 0.45 and 200
detections. ``model.loss = "focal"`` trains Detectron2's sigmoid focal loss instead (the
head follows ``model.loss``; focal inference uses sigmoid scores).
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform

from scratchdet.backbone import RootResNet, SSDBackbone
from scratchdet.modeling import (
    ScratchDetSSD, SSDAnchorGenerator, SSDHead, SSDMatcher, ssd_num_anchors)

_ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
_channels = [256, 512, 128, 128, 128, 128]  # res4, res5 of Root-ResNet-34, then extras

model = L(ScratchDetSSD)(
    backbone=L(SSDBackbone)(
        bottom_up=L(RootResNet)(
            depth=34,
            stem_channels=64,
            stem_convs=3,
            stem_kernel=3,
            stem_stride=1,
            stem_pool="max2x2",
            norm="BN",
            out_features=["res4", "res5"],
        ),
        in_features=["res4", "res5"],
        extra_channels=[128, 128, 128, 128],
        norm="BN",
    ),
    head=L(SSDHead)(
        input_shape=[ShapeSpec(channels=c) for c in _channels],
        num_classes="${..num_classes}",
        num_anchors=ssd_num_anchors(_ratios),
        norm="BN",
        prior_prob=0.01,  # focal loss only
        loss="${..loss}",
    ),
    anchor_generator=L(SSDAnchorGenerator)(
        min_sizes=[30, 60, 111, 162, 213, 264],
        max_sizes=[60, 111, 162, 213, 264, 315],
        aspect_ratios=_ratios,
        strides=[8, 16, 32, 64, 100, 300],
        offset=0.5,
    ),
    box2box_transform=L(Box2BoxTransform)(weights=[10.0, 10.0, 5.0, 5.0]),
    anchor_matcher=L(SSDMatcher)(thresholds=[0.5], labels=[0, 1]),
    num_classes=20,
    loss="multibox",
    neg_pos_ratio=3.0,
    head_in_features=["res4", "res5", "extra1", "extra2", "extra3", "extra4"],
    focal_loss_alpha=0.25,
    focal_loss_gamma=2.0,
    smooth_l1_beta=1.0,
    test_score_thresh=0.01,
    test_nms_thresh=0.45,
    max_detections_per_image=200,
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[57.375, 57.120, 58.395],
    input_format="BGR",
)
