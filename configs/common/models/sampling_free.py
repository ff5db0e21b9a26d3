"""Turn Detectron2 model configs into their Sampling-Free versions (Chen et al. 2019).

- RetinaNet -> SamplingFreeRetinaNet: BCE over all anchors, guided scaling (1.0),
  bias from the data's prior, adaptive global threshold, NMS 0.55.
- Faster/Mask R-CNN -> SamplingFreeRPN (all anchors, scale 1.0, prior bias with C = 1)
  + SamplingFreeROIHeads (all proposals, softmax CE scaled to 2.0 x box loss, test
  score threshold 1e-4).
- FCOS -> SamplingFreeFCOS: BCE over every location, guided scaling (1.0 x the GIoU
  loss), bias from the prior counted with FCOS's point assignment, adaptive global
  threshold on Detectron2's sqrt(cls x centerness) score.
- Cascade R-CNN -> SamplingFreeRPN + SamplingFreeCascadeROIHeads (every stage on all
  proposals, each stage's softmax CE scaled to 2.0 x its box loss, the last stage's test
  score threshold 1e-4).
"""
from scratchdet.sampling_free import (
    SamplingFreeCascadeROIHeads,
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
    bp.test_score_thresh = 1e-4
    return model


def sampling_free_fcos(model, threshold_rule="global"):
    model._target_ = SamplingFreeFCOS
    model.guided_loss_scale = 1.0
    model.threshold_rule = threshold_rule
    for k in ("focal_loss_alpha", "focal_loss_gamma"):
        model.pop(k, None)
    return model


def sampling_free_cascade_rcnn(model):
    """Detectron2's Cascade R-CNN model config (``common/models/cascade_rcnn.py``) in its
    Sampling-Free form: the RPN as in :func:`sampling_free_rcnn`, and every stage's box
    predictor Sampling-Free (guided scale 2.0, box loss per foreground coordinate,
    test score threshold 1e-4)."""
    model.proposal_generator._target_ = SamplingFreeRPN
    model.proposal_generator.guided_loss_scale = 1.0
    model.roi_heads._target_ = SamplingFreeCascadeROIHeads
    for bp in model.roi_heads.box_predictors:
        bp._target_ = SamplingFreeFastRCNNOutputLayers
        bp.guided_loss_scale = 2.0
        bp.test_score_thresh = 1e-4
    return model
