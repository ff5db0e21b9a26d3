"""Detectron2's stock FCOS (focal loss, centre sampling radius 1.5, GIoU, centerness,
test score threshold 0.2 on sqrt(cls x centerness)) on the demo's narrow Root-ResNet-18-FPN
backbone, trained from scratch on the embedded shapes data: the demo RetinaNet's
backbone, head widths (64, two convs, BN per level), data and schedule, with FCOS's
meta-architecture and loss. The baseline of sampling_free_fcos_root_resnet18_fpn_demo.py.
"""
from detectron2.config import LazyCall as L
from detectron2.modeling.meta_arch.fcos import FCOSHead

from scratchdet.modeling import ConfigurableFCOS

from .scratchdet_root_resnet18_fpn_demo import (  # noqa: F401
    dataloader, lr_multiplier, optimizer, train)
from .scratchdet_root_resnet18_fpn_demo import model as _retinanet

model = L(ConfigurableFCOS)(
    backbone=_retinanet.backbone,  # P6/P7 from the last FPN level (p4), as FCOS from P5
    head=L(FCOSHead)(
        input_shape=_retinanet.head.input_shape,
        num_classes="${..num_classes}",
        conv_dims=_retinanet.head.conv_dims,
        norm="BN",
        prior_prob=0.01,
    ),
    head_in_features=_retinanet.head_in_features,
    num_classes=3,
    center_sampling_radius=1.5,
    focal_loss_alpha=0.25,
    focal_loss_gamma=2.0,
    test_score_thresh=0.2,
    test_topk_candidates=1000,
    test_nms_thresh=0.6,
    max_detections_per_image=50,
    pixel_mean=_retinanet.pixel_mean,
    pixel_std=_retinanet.pixel_std,
)
train.output_dir = "./output/demo_fcos"
