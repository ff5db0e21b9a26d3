"""Detectron2's Cascade R-CNN (three stages at IoU 0.5/0.6/0.7; sampled losses: 256
anchors per image in the RPN, 32 proposals per image at 1:3 into stage 0, whose boxes the
later stages refine) on the demo's narrow Root-ResNet-18-FPN, from scratch on the
embedded shapes data (see ``_rcnn_demo.py`` for the sizes), with the demo detector's
data, schedule and optimizer; the stock side of the Sampling-Free comparison with
``sampling_free_cascade_rcnn_root_resnet18_fpn_demo.py``."""
from detectron2.model_zoo import get_config

from ._rcnn_demo import demo_rcnn
from .scratchdet_root_resnet18_fpn_demo import (  # noqa: F401
    dataloader, lr_multiplier, optimizer, train)

model = demo_rcnn(get_config("common/models/cascade_rcnn.py").model)
train.output_dir = "./output/demo_cascade_rcnn"
