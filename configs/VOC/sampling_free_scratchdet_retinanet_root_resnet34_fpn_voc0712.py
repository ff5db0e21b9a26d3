"""ScratchDet Root-ResNet-34-FPN RetinaNet from scratch on VOC 07+12, trained
Sampling-Free. Schedule as the focal ScratchDet VOC config."""
from ..common.models.sampling_free import sampling_free_retinanet
from .scratchdet_retinanet_root_resnet34_fpn_voc0712 import (  # noqa: F401
    dataloader, lr_multiplier, model, optimizer, train)

model = sampling_free_retinanet(model)
train.output_dir = "./output/sampling_free_scratchdet_retinanet_root_resnet34_fpn_voc0712"
train.adaptive_threshold = dict(enabled=True, rule=None, fixed=0.05)  # AP at both, one pass
