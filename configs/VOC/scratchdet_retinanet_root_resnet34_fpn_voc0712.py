"""ScratchDet RetinaNet-style detector, Root-ResNet-34-FPN, VOC 07+12 -> VOC 2007 test,
from scratch (BN in backbone, FPN and head). Schedule is ours: 18k iterations of batch
16 would be the ImageNet-pretrained 0.2x-style schedule; from scratch uses 4x that."""
from ..common.data.voc import dataloader
from ..common.models.scratchdet_retinanet_fpn import model
from ..common.optim import SGD as optimizer
from ..common.schedule import multistep
from ..common.train import train

model.num_classes = 20
dataloader.train.total_batch_size = 16
train.max_iter = 72000
train.eval_period = 8000
train.output_dir = "./output/scratchdet_retinanet_root_resnet34_fpn_voc0712"
optimizer.lr = 0.05
lr_multiplier = multistep(train.max_iter, milestones=[56000, 66000], warmup_iter=1000)
