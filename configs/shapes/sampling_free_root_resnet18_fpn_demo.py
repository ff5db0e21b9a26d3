"""The demo detector (narrow ScratchDet Root-ResNet-18-FPN, from scratch) trained the
Sampling-Free way: BCE over all anchors with guided scaling, classification bias from
the embedded data's foreground prior, adaptive score threshold at inference."""
from ..common.models.sampling_free import sampling_free_retinanet
from .scratchdet_root_resnet18_fpn_demo import (  # noqa: F401
    dataloader, lr_multiplier, model, optimizer, train)

model = sampling_free_retinanet(model)
train.output_dir = "./output/demo_sampling_free"
train.adaptive_threshold = dict(enabled=True, rule=None, fixed=0.05)  # AP at both, one pass
