"""Sampling-Free Cascade R-CNN R50-FPN 1x on COCO: Detectron2's Cascade R-CNN R50-FPN
(``common/models/cascade_rcnn.py``: three stages at IoU 0.5/0.6/0.7, class-agnostic box
regression; without its mask head, ImageNet R-50, 2000 RPN proposals per image in
training as in Detectron2's ``Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml``, lr 0.02, 90k
iterations at batch 16) with the Sampling-Free RPN and cascade ROI heads.

Detectron2's model zoo states no box-only Cascade R-CNN; its Cascade *Mask* R-CNN R50-FPN
1x (``Misc/cascade_mask_rcnn_R_50_FPN_1x``, trained with the mask head) has 42.1 box AP."""
from detectron2.model_zoo import get_config

from ..common.models.sampling_free import sampling_free_cascade_rcnn
from .sampling_free_faster_rcnn_R_50_FPN_1x import (  # noqa: F401
    dataloader, lr_multiplier, optimizer, train)

_base = get_config("common/models/cascade_rcnn.py")
model = sampling_free_cascade_rcnn(_base.model)
for _k in ("mask_in_features", "mask_pooler", "mask_head"):  # box-only
    model.roi_heads[_k] = None
model.backbone.bottom_up.freeze_at = 2
model.proposal_generator.post_nms_topk = (2000, 1000)  # RPN.POST_NMS_TOPK_TRAIN: 2000

train.output_dir = "./output/sampling_free_cascade_rcnn_R_50_FPN_1x"
