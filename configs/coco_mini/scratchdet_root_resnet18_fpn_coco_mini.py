"""A CPU-sized ScratchDet Root-ResNet-18-FPN RetinaNet on the real-COCO subset
(../shared/data/coco_mini: 80 train / 79 val images, 80 classes, short side 256).

Eighty images are far too few to learn COCO; this config exists so that the whole
COCO path (registration at a path, 80-class COCO evaluation) runs for real on a CPU.
"""
from ..common.data.coco_mini import dataloader, datasets  # noqa: F401
from ..shapes.scratchdet_root_resnet18_fpn_demo import (  # noqa: F401
    lr_multiplier, model, optimizer, train)

model.num_classes = 80
model.max_detections_per_image = 100
# COCO objects are larger than the shapes: anchors 16..256 on the same five levels
model.anchor_generator.sizes = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)]
                                for x in [16, 32, 64, 128, 256]]
train.output_dir = "./output/coco_mini"
train.max_iter = 300
train.eval_period = 300
