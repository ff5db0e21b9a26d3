"""Detectron2's R-CNN model configs on the demo's narrow backbone, sized for the shapes
data (160x160 images, 0 to 6 objects of 8 to 80 px, 3 classes) on a CPU.

The backbone is the demo detector's (``scratchdet_root_resnet18_fpn_demo.py``: narrow
Root-ResNet-18, root 32, stages 32..256, FPN 64 with BN, from scratch) with Detectron2's
max-pool top level instead of P6/P7: levels p2..p5 at strides 4..32. Everything else is
Detectron2's (``common/models/mask_rcnn_fpn.py`` / ``cascade_rcnn.py``), resized:

- RPN: one anchor size per level, 10/20/40/80 px (the objects are 8 to 80 px), 3 aspect
  ratios; at most 1000 (500 in test) boxes per level before NMS and 128 after (for at
  most 6 objects; the ROI heads' cost, ROIAlign's backward above all, grows with it);
- ROI heads: 32 proposals sampled per image at 1:3, a quarter of the 128 proposals as
  Detectron2's 512 are a quarter of its 2000 (the Sampling-Free heads use all 128);
  box heads of two 256-wide FCs instead of
  1024; at most 50 detections per image, as the demo.
"""
from detectron2.layers import ShapeSpec
from detectron2.config import LazyCall as L

from scratchdet.backbone.fpn import last_level_max_pool

from .scratchdet_root_resnet18_fpn_demo import model as _demo


def demo_rcnn(model, *, pre_nms_topk=(1000, 500), post_nms_topk=(128, 128),
              batch_size_per_image=32, mask=False):
    """Narrow a Detectron2 R-CNN model config (Faster or Cascade) to the shapes demo's
    backbone and sizes; its mask head is dropped, or with ``mask`` narrowed to 64
    channels (4 convs and the deconv). The RPN's (train, test) top-k before and after NMS
    and the proposals per image of the ROI heads default to the sizes above. Returns
    ``model``."""
    model.backbone = _demo.backbone
    model.backbone.top_block = L(last_level_max_pool)(in_feature="p4")
    rpn = model.proposal_generator
    rpn.in_features = ["p2", "p3", "p4", "p5"]
    rpn.head.in_channels = 64
    rpn.anchor_generator.sizes = [[10], [20], [40], [80]]
    rpn.anchor_generator.strides = [4, 8, 16, 32]
    rpn.pre_nms_topk = pre_nms_topk
    rpn.post_nms_topk = post_nms_topk
    roi = model.roi_heads
    roi.num_classes = 3
    roi.batch_size_per_image = batch_size_per_image
    if mask:
        roi.mask_head.input_shape = ShapeSpec(channels=64, width=14, height=14)
        roi.mask_head.conv_dims = [64] * 5
    else:
        for k in ("mask_in_features", "mask_pooler", "mask_head"):  # box-only
            roi[k] = None
    cascade = "box_heads" in roi
    for head in roi.box_heads if cascade else [roi.box_head]:
        head.input_shape = ShapeSpec(channels=64, height=7, width=7)
        head.fc_dims = [256, 256]
    for bp in roi.box_predictors if cascade else [roi.box_predictor]:
        bp.input_shape = ShapeSpec(channels=256)
        bp.test_topk_per_image = 50
    model.pixel_mean = _demo.pixel_mean
    model.pixel_std = _demo.pixel_std
    return model
