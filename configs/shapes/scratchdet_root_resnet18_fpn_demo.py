"""`make demo`: a narrow ScratchDet Root-ResNet-18-FPN RetinaNet trained from scratch on
the embedded shapes data (160x160 images, 3 classes) on a CPU.

Narrow widths (root 32, stages 32..256, FPN/head 64 with two head convs) keep one
iteration of batch 8 under a second on two cores; everything else is the paper's recipe:
random init, BN in backbone, FPN and head, a large learning rate with warm-up.
"""
from detectron2.layers import ShapeSpec

from ..common.data.shapes import dataloader
from ..common.models.scratchdet_retinanet_fpn import model
from ..common.optim import SGD as optimizer
from ..common.schedule import cosine
from ..common.train import train

bb = model.backbone.bottom_up
bb.depth = 18
bb.stem_channels = 32
bb.res2_out_channels = 32
model.backbone.out_channels = 64
model.backbone.top_block.in_channels = 64
model.backbone.top_block.out_channels = 64
model.head.input_shape = [ShapeSpec(channels=64)] * 5
model.head.conv_dims = [64, 64]
model.anchor_generator.sizes = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)]
                                for x in [8, 16, 32, 64, 128]]
model.num_classes = 3
model.test_score_thresh = 0.05
model.max_detections_per_image = 50

dataloader.train.num_workers = 0  # mapping a 160 px image costs ~1 ms: no worker needed
dataloader.test.num_workers = 0

train.device = "cpu"
train.max_iter = 600
train.output_dir = "./output/demo"
train.checkpointer = dict(period=200, max_to_keep=2)
train.eval_period = 600
train.log_period = 20

optimizer.lr = 0.03
lr_multiplier = cosine(train.max_iter, warmup_iter=50)
