"""The coco_mini CPU config as a Sampling-Free FCOS: the demo's narrow Root-ResNet-18-FPN
FCOS with 80 classes on the real-COCO subset (80 train / 79 val images, short side
224-288), prior counted from coco_mini's annotations with FCOS's point assignment."""
from ..common.data.coco_mini import dataloader, datasets  # noqa: F401
from ..common.models.sampling_free import sampling_free_fcos
from ..shapes.fcos_root_resnet18_fpn_demo import (  # noqa: F401
    lr_multiplier, model, optimizer, train)

model = sampling_free_fcos(model)
model.num_classes = 80
model.max_detections_per_image = 100
train.output_dir = "./output/coco_mini_sampling_free_fcos"
train.max_iter = 300
train.eval_period = 300
# AP at the adaptive threshold and at the stock FCOS's 0.2, one pass
train.adaptive_threshold = dict(enabled=True, rule=None, fixed=0.2)
