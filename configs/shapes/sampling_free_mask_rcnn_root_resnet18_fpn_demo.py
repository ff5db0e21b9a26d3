"""Sampling-Free Mask R-CNN on the embedded shapes data: mask_rcnn_root_resnet18_fpn_demo.py
with the Sampling-Free RPN (every anchor, objectness guided-scaled to 1.0 x its box loss,
bias from the prior) and ROI heads (every labelled proposal in the box head, softmax CE
guided-scaled to 2.0 x the box loss, test score threshold 1e-4); the mask head is
Detectron2's and trains on the foreground proposals, as in the stock model."""
from ..common.models.sampling_free import sampling_free_rcnn
from .mask_rcnn_root_resnet18_fpn_demo import (  # noqa: F401
    dataloader, lr_multiplier, model, optimizer, train)

model = sampling_free_rcnn(model)
train.output_dir = "./output/demo_sampling_free_mask_rcnn"
train.adaptive_threshold = dict(enabled=True, rule=None, fixed=0.05)  # AP at both, one pass
