"""Sampling-Free RetinaNet R50-FPN on VOC 07+12 -> VOC 2007 test (ImageNet R-50).
Schedule: Detectron2's VOC schedule (18k iterations at batch 16, lr steps at 12k/16k).
Paper (0.2x-style VOC schedule): 79.3 -> 80.1 mAP."""
from ..COCO.sampling_free_retinanet_R_50_FPN_1x import model, optimizer, train
from ..common.data.voc import dataloader  # noqa: F401
from ..common.schedule import multistep

model.num_classes = 20
train.max_iter = 18000
train.eval_period = 6000
train.output_dir = "./output/sampling_free_retinanet_R_50_FPN_voc0712"
lr_multiplier = multistep(train.max_iter, milestones=[12000, 16000], warmup_iter=100)
