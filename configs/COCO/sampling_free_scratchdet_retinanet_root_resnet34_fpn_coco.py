"""ScratchDet Root-ResNet-34-FPN RetinaNet from scratch, trained Sampling-Free (the two
methods composed): BN everywhere, random init, BCE over all anchors with guided scaling,
prior bias and adaptive threshold. Schedule as the focal ScratchDet config."""
from ..common.models.sampling_free import sampling_free_retinanet
from .scratchdet_retinanet_root_resnet34_fpn_coco import (  # noqa: F401
    dataloader, lr_multiplier, model, optimizer, train)

model = sampling_free_retinanet(model)
train.output_dir = "./output/sampling_free_scratchdet_retinanet_root_resnet34_fpn_coco"
train.adaptive_threshold = dict(enabled=True, rule=None, fixed=0.05)  # AP at both, one pass
