"""Stock Mask R-CNN (Detectron2's sampled RPN and ROI heads) with the demo's narrow
Root-ResNet-18-FPN backbone, from scratch on the embedded shapes data (exact polygon
masks, see scratchdet.data.shapes): the baseline of
sampling_free_mask_rcnn_root_resnet18_fpn_demo.py, which changes only the RPN and ROI
heads (no sampling, guided-scaled losses, test score threshold).

Detectron2's Mask R-CNN FPN model (common/models/mask_rcnn_fpn.py) made CPU-sized: the
demo backbone (root 32, stages 32..256, FPN 64 with BN) with a max-pool top level, so
p2..p5 at strides 4..32; one anchor size per level, 10..80 px for 8..80 px objects;
fewer proposals (RPN top 600/300 before NMS, 200/100 after, train/test) and 128
sampled per image for the box head, whose FCs are 256 wide; a 64-channel mask head.
Data (plus masks), solver and schedule are the demo's (600 iterations at batch 8, lr
0.03, cosine). Evaluates ``bbox`` and ``segm`` with COCOEvaluator.
"""
from detectron2.model_zoo import get_config

from ._rcnn_demo import demo_rcnn
from .scratchdet_root_resnet18_fpn_demo import (  # noqa: F401
    dataloader, lr_multiplier, optimizer, train)

model = demo_rcnn(get_config("common/models/mask_rcnn_fpn.py").model,
                  pre_nms_topk=(600, 300), post_nms_topk=(200, 100),
                  batch_size_per_image=128, mask=True)

dataloader.train.mapper.use_instance_mask = True
dataloader.evaluator.tasks = ("bbox", "segm")
train.output_dir = "./output/demo_mask_rcnn"
