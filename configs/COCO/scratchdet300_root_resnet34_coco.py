"""ScratchDet300 (Root-ResNet-34, SSD head with BN) on COCO 2017 from scratch.

Paper: 32.7 AP on COCO test-dev (APs 13.0) at 300x300. Same recipe as the VOC config
(batch 128, lr 0.05, warm-up, SSD augmentation); SSD300's COCO anchor sizes. Iteration
counts are ours (about 120 epochs), not a figure quoted from the paper.
"""
from ..common.data.coco import dataloader
from ..common.data.ssd300 import make_ssd300
from ..common.models.scratchdet_ssd300 import model
from ..common.optim import SGD as optimizer
from ..common.schedule import multistep
from ..common.train import train

dataloader = make_ssd300(dataloader)
dataloader.train.total_batch_size = 128
model.num_classes = 80
model.anchor_generator.min_sizes = [21, 45, 99, 153, 207, 261]
model.anchor_generator.max_sizes = [45, 99, 153, 207, 261, 315]

train.max_iter = 110000
train.eval_period = 10000
train.output_dir = "./output/scratchdet300_root_resnet34_coco"
optimizer.lr = 0.05
lr_multiplier = multistep(train.max_iter, milestones=[80000, 100000], warmup_iter=2000)
