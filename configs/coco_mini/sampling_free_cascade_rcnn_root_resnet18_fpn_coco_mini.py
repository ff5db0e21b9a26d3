"""The shapes Sampling-Free Cascade R-CNN (narrow Root-ResNet-18-FPN, from scratch; see
``../shapes/_rcnn_demo.py``) on the real-COCO subset (80 train / 79 val images, 80
classes, short side 256): RPN prior counted on coco_mini's annotations, every cascade
stage on all proposals, AP at the 1e-4 test threshold and at the fixed 0.05 side by side.

Eighty images are far too few to learn COCO; this config exists so that the whole
Sampling-Free Cascade R-CNN path runs on real COCO data on a CPU. The images have about
3.5 times the shapes' pixels: 512 proposals per image in training (256 in test), the box
loss normalised by 128 per image, anchors 16..128 px, 100 detections per image.
"""
from ..common.data.coco_mini import dataloader, datasets  # noqa: F401
from ..shapes.sampling_free_cascade_rcnn_root_resnet18_fpn_demo import (  # noqa: F401
    lr_multiplier, model, optimizer, train)

model.roi_heads.num_classes = 80
model.roi_heads.batch_size_per_image = 128
model.proposal_generator.post_nms_topk = (512, 256)
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128]]
for _bp in model.roi_heads.box_predictors:
    _bp.test_topk_per_image = 100
train.output_dir = "./output/coco_mini_sampling_free_cascade_rcnn"
train.max_iter = 300
train.eval_period = 300
