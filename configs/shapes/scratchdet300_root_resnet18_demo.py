"""ScratchDet's own detector on the embedded shapes data (160x160 images, 3 classes), from
scratch on a CPU: ScratchDet300's design (Root-ResNet, SSD extra stages, SSD head with BN,
SSD anchors and matching, MultiBox loss, softmax inference with NMS 0.45 and 200
detections) at the demo detector's narrow widths and the shapes' own resolution.

Six maps for a 160x160 input, as ScratchDet300's six for 300x300: res3 40x40 (stride 4),
res4 20x20, res5 10x10, then extra stages at 5, 3 and 1 (64 channels). Anchor sizes 8 to
160 px follow the shapes (8 to 80 px). Data, schedule and optimizer are the demo
detector's (``scratchdet_root_resnet18_fpn_demo.py``: flip only, batch 8, lr 0.03,
cosine over 600 iterations), so the two detectors compare at equal training.
"""
from detectron2.layers import ShapeSpec

from ..common.models.scratchdet_ssd300 import model
from .scratchdet_root_resnet18_fpn_demo import (  # noqa: F401
    dataloader, lr_multiplier, optimizer, train)

_stages = ["res3", "res4", "res5"]
bb = model.backbone.bottom_up
bb.depth = 18
bb.stem_channels = 32
bb.res2_out_channels = 32
bb.out_features = _stages
model.backbone.in_features = _stages
model.backbone.extra_channels = [64, 64, 64]
model.head.input_shape = [ShapeSpec(channels=c) for c in [64, 128, 256, 64, 64, 64]]
model.head_in_features = _stages + ["extra1", "extra2", "extra3"]
model.anchor_generator.min_sizes = [8, 16, 32, 64, 96, 128]
model.anchor_generator.max_sizes = [16, 32, 64, 96, 128, 160]
model.anchor_generator.strides = [4, 8, 16, 32, 53, 160]  # 160 / 3 -> 53, as SSD300's 100
model.num_classes = 3

train.output_dir = "./output/demo_scratchdet300"
