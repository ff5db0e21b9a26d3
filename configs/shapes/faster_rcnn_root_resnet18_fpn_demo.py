"""Detectron2's Faster R-CNN (sampled losses: 256 anchors per image in the RPN, 32
proposals per image at 1:3 in the box head) on the demo's narrow Root-ResNet-18-FPN,
from scratch on the embedded shapes data (see ``_rcnn_demo.py`` for the sizes). Data,
schedule and optimizer are the demo detector's (flip only, batch 8, lr 0.03, cosine over
600 iterations); the stock side of the Sampling-Free comparison with
``sampling_free_faster_rcnn_root_resnet18_fpn_demo.py``."""
from detectron2.model_zoo import get_config

from ._rcnn_demo import demo_rcnn
from .scratchdet_root_resnet18_fpn_demo import (  # noqa: F401
    dataloader, lr_multiplier, optimizer, train)

model = demo_rcnn(get_config("common/models/mask_rcnn_fpn.py").model)
train.output_dir = "./output/demo_faster_rcnn"
