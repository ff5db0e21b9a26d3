"""ScratchDet RetinaNet-style detector, Root-ResNet-34-FPN, COCO 2017, from scratch.

Detectron2's RetinaNet recipe at 800px (multi-scale train 640..800) with the ScratchDet
changes: random init, BN in backbone, FPN and head, lr 0.05 with warm-up for batch 16
(the paper's large-lr setting scaled to batch 16 is ours), weight decay 5e-4. From scratch
needs a long schedule: 6x here (our choice, following "Rethinking ImageNet Pre-training").
"""
from ..common.data.coco import dataloader
from ..common.models.scratchdet_retinanet_fpn import model
from ..common.optim import SGD as optimizer
from ..common.schedule import multistep
from ..common.train import train

model.num_classes = 80
dataloader.train.total_batch_size = 16
train.max_iter = 540000
train.eval_period = 30000
train.output_dir = "./output/scratchdet_retinanet_root_resnet34_fpn_coco"
optimizer.lr = 0.05
lr_multiplier = multistep(train.max_iter, milestones=[480000, 520000], warmup_iter=2000)
