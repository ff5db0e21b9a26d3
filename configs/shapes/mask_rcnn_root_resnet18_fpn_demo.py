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
import copy

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config

from scratchdet.backbone.fpn import last_level_max_pool

from .scratchdet_root_resnet18_fpn_demo import (  # noqa: F401
    dataloader, lr_multiplier, optimizer, train)
from .scratchdet_root_resnet18_fpn_demo import model as _demo

_width = 64  # FPN, RPN, box and mask head channels
model = get_config("common/models/mask_rcnn_fpn.py").model
model.backbone = copy.deepcopy(_demo.backbone)
model.backbone.top_block = L(last_level_max_pool)(in_feature="p4")
model.pixel_mean = list(_demo.pixel_mean)
model.pixel_std = list(_demo.pixel_std)

_rpn = model.proposal_generator
_rpn.in_features = ["p2", "p3", "p4", "p5"]
_rpn.head.in_channels = _width
_rpn.anchor_generator.sizes = [[10], [20], [40], [80]]
_rpn.anchor_generator.strides = [4, 8, 16, 32]
_rpn.pre_nms_topk = (600, 300)
_rpn.post_nms_topk = (200, 100)

_roi = model.roi_heads
_roi.num_classes = 3
_roi.batch_size_per_image = 128
_roi.box_head.input_shape = ShapeSpec(channels=_width, height=7, width=7)
_roi.box_head.fc_dims = [256, 256]
_roi.box_predictor.input_shape = ShapeSpec(channels=256)
_roi.box_predictor.test_topk_per_image = 50
_roi.mask_head.input_shape = ShapeSpec(channels=_width, width=14, height=14)
_roi.mask_head.conv_dims = [_width] * 5  # 4 convs and the deconv

dataloader.train.mapper.use_instance_mask = True
dataloader.evaluator.tasks = ("bbox", "segm")
train.output_dir = "./output/demo_mask_rcnn"
