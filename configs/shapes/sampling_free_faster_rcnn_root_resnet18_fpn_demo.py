"""``faster_rcnn_root_resnet18_fpn_demo.py`` trained Sampling-Free: the RPN on every
anchor (objectness bias from the data's prior, guided scaling 1.0), the box head on all
128 proposals per image (softmax CE guided-scaled to 2.0 x the box loss), test score
threshold 1e-4; AP at it and at the fixed 0.05 side by side."""
from ..common.models.sampling_free import sampling_free_rcnn
from .faster_rcnn_root_resnet18_fpn_demo import (  # noqa: F401
    dataloader, lr_multiplier, model, optimizer, train)

model = sampling_free_rcnn(model)
train.output_dir = "./output/demo_sampling_free_faster_rcnn"
train.adaptive_threshold = dict(enabled=True, rule=None, fixed=0.05)  # AP at both, one pass
