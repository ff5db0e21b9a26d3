"""Sampling-Free Mask R-CNN on the real-COCO subset (../shared/data/coco_mini: 80 train /
79 val images with instance masks, 80 classes, short side 256): the shapes Sampling-Free
Mask R-CNN (narrow Root-ResNet-18-FPN from scratch) with 80 classes, COCO-sized anchors
and 100 detections per image. Evaluates ``bbox`` and ``segm`` at the adaptive and the
fixed threshold.

As the other coco_mini configs, it exists so that the whole COCO path (registration at
a path, polygon masks through Detectron2's mapper, 80-class box and mask evaluation)
runs for real on a CPU; eighty images are far too few to learn COCO.
"""
from ..common.data.coco_mini import dataloader, datasets  # noqa: F401
from ..shapes.sampling_free_mask_rcnn_root_resnet18_fpn_demo import (  # noqa: F401
    lr_multiplier, model, optimizer, train)

model.roi_heads.num_classes = 80
model.roi_heads.box_predictor.test_topk_per_image = 100
# COCO objects are larger than the shapes: anchors 16..128 on the same four levels
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128]]

dataloader.train.mapper.use_instance_mask = True
dataloader.evaluator.tasks = ("bbox", "segm")

train.output_dir = "./output/coco_mini_sampling_free_mask_rcnn"
train.max_iter = 300
train.eval_period = 300
