"""The coco_mini CPU config trained Sampling-Free (prior from coco_mini's annotations)."""
from ..common.models.sampling_free import sampling_free_retinanet
from .scratchdet_root_resnet18_fpn_coco_mini import (  # noqa: F401
    dataloader, datasets, lr_multiplier, model, optimizer, train)

model = sampling_free_retinanet(model)
train.output_dir = "./output/coco_mini_sampling_free"
train.adaptive_threshold = dict(enabled=True, rule=None, fixed=0.05)  # AP at both, one pass
