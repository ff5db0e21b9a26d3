"""Turn Detectron2 model configs into their Sampling-Free versions (Chen et al. 2019).

- RetinaNet -> SamplingFreeRetinaNet: BCE over all anchors, guided scaling (1.0),
  bias from the data's prior, adaptive global threshold, NMS 0.55.
- Faster/Mask R-CNN -> SamplingFreeRPN (all anchors, scale 1.0, prior bias with C = 1)
  + SamplingFreeROIHeads (all proposals, softmax CE scaled to 2.0 x box loss, test
  score threshold 1e-4).
- FCOS -> SamplingFreeFCOS: BCE over every location, guided scaling (1.0 x the GIoU
  loss), bias from the prior counted with FCOS's point assignment, adaptive global
  threshold on Detectron2's sqrt(cls x centerness) score.
"""
from scratchdet.sampling_free import (
    SamplingFreeFastRCNNOutputLayers,
    SamplingFreeFCOS,
    SamplingFreeROIHeads,
    SamplingFreeRetinaNet,
    SamplingFreeRPN,
)


def sampling_free_retinanet(model, threshold_rule="global"):
    model._target_ = SamplingFreeRetinaNet
    model.guided_loss_scale = 1.0
    model.threshold_rule = threshold_rule
    model.test_nms_thresh = 0.55
    for k in ("focal_loss_alpha", "focal_loss_gamma"):
        model.pop(k, None)
    return model


def sampling_free_rcnn(model):
    model.proposal_generator._target_ = SamplingFreeRPN
    model.proposal_generator.guided_loss_scale = 1.0
    model.roi_heads._target_ = SamplingFreeROIHeads
    bp = model.roi_heads.box_predictor
    bp._target_ = SamplingFreeFastRCNNOutputLayers
    bp.guided_loss_scale = 2.0
    bp.box_loss_normalizer = "${..batch_size_per_image}"
    bp.test_score_thresh = 1e-4
    return model


def sampling_free_fcos(model, threshold_rule="global"):
    model._target_ = SamplingFreeFCOS
    model.guided_loss_scale = 1.0
    model.threshold_rule = threshold_rule
    for k in ("focal_loss_alpha", "focal_loss_gamma"):
        model.pop(k, None)
    return model
