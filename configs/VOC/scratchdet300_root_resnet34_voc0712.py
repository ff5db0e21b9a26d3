"""ScratchDet300 (Root-ResNet-34, SSD head with BN) on VOC 07+12 from scratch.

Paper (Zhu et al. 2019): 80.4 mAP on VOC 2007 test at 300x300. Recipe from the paper:
batch 128, SGD lr 0.05, momentum 0.9, weight decay 5e-4, linear warm-up, SSD
augmentation. The iteration counts below are ours (about 300 epochs of the 16.5k
images, decayed x0.1 twice), not a figure quoted from the paper.
"""
from ..common.data.ssd300 import make_ssd300
from ..common.data.voc import dataloader
from ..common.models.scratchdet_ssd300 import model
from ..common.optim import SGD as optimizer
from ..common.schedule import multistep
from ..common.train import train

dataloader = make_ssd300(dataloader)
dataloader.train.total_batch_size = 128
dataloader.test.dataset.names = "voc_2007_test"
model.num_classes = 20

train.max_iter = 40000
train.eval_period = 5000
train.output_dir = "./output/scratchdet300_root_resnet34_voc0712"
optimizer.lr = 0.05
lr_multiplier = multistep(train.max_iter, milestones=[26000, 34000], warmup_iter=1000)
