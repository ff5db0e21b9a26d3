"""Sampling-Free Faster R-CNN parts: an RPN and ROI heads that use every anchor/proposal."""
from typing import List, Tuple

import torch

from detectron2.config import configurable
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY, ROI_HEADS_REGISTRY
from detectron2.modeling.proposal_generator import RPN
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from .guided_loss import GuidedLossScaler
from .nms import fast_rcnn_inference_exact
from .prior_state import PriorState, fill_bias

__all__ = ["SamplingFreeRPN", "SamplingFreeROIHeads", "SamplingFreeFastRCNNOutputLayers"]


@PROPOSAL_GENERATOR_REGISTRY.register()
class SamplingFreeRPN(RPN):
    """
    Detectron2's :class:`RPN` without the 256-anchor subsampling: objectness BCE over
    every non-ignored anchor, guided-scaled to ``guided_loss_scale`` x the RPN box loss;
    the objectness bias comes from the RPN's foreground prior (C = 1).

    The box loss is the mean over the coordinates of the foreground anchors (sum / (4 x
    foreground anchors)), as in the paper's released code, not Detectron2's sum / (256 x
    images): that normaliser is the sampled batch's size, and with few foreground anchors
    it makes the box loss, and the objectness loss guided to it, train far too weakly.
    """

    @configurable
    def __init__(self, *, guided_loss_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.guided_loss = GuidedLossScaler(guided_loss_scale)
        self.prior_state = PriorState(1, 1, "global")

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["guided_loss_scale"] = cfg.MODEL.SAMPLING_FREE.GUIDED_LOSS_SCALE
        return ret

    def prior_heads(self):
        return [("rpn", self.anchor_generator, self.anchor_matcher, 1, self)]

    def prior_bias_params(self):
        """The objectness bias :meth:`set_prior` sets to logit(p)."""
        return [self.rpn_head.objectness_logits.bias]

    def set_prior(self, counts, set_bias: bool = True) -> None:
        """Store the counted prior and, with ``set_bias``, set the objectness bias to
        logit(p) (see :meth:`SamplingFreeRetinaNet.set_prior`)."""
        self.prior_state.set(counts)
        if set_bias:
            fill_bias(self.prior_bias_params(), counts.prior)

    def _subsample_labels(self, label):
        """Keep every anchor's label (1 fg, 0 bg, -1 ignored): no sampling."""
        return label

    def losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        if self.training:
            self.prior_state.require("SamplingFreeRPN")
        losses = super().losses(anchors, pred_objectness_logits, gt_labels,
                                pred_anchor_deltas, gt_boxes)
        num_fg = sum(int((g == 1).sum()) for g in gt_labels)
        losses["loss_rpn_loc"] = losses["loss_rpn_loc"] * (
            self.batch_size_per_image * len(gt_labels) / max(1, 4 * num_fg))
        losses["loss_rpn_cls"] = self.guided_loss(losses["loss_rpn_cls"], losses["loss_rpn_loc"])
        return losses


class SamplingFreeFastRCNNOutputLayers(FastRCNNOutputLayers):
    """
    Box predictor trained on all proposals: softmax cross-entropy guided-scaled to
    ``guided_loss_scale`` (2.0) x the box loss. The box loss is the mean over the
    coordinates of the foreground proposals (sum / (4 x foreground proposals)), as in the
    paper's released code, not Detectron2's sum / (all proposals): without sampling the
    proposals are mostly background and that would shrink both losses. Test score
    threshold 1e-4 by default. The unscaled
    cross-entropy is logged as ``loss_cls_unscaled`` (``stage{k}/...`` in a cascade).
    Inference is Detectron2's with :func:`~scratchdet.sampling_free.nms.per_class_nms` in
    place of ``batched_nms`` (:meth:`detect`), so one pass at a score floor, filtered, is
    exactly the pass at a higher threshold.
    """

    @configurable
    def __init__(self, input_shape, *, guided_loss_scale: float = 2.0,
                 test_score_thresh: float = 1e-4, **kwargs):
        super().__init__(input_shape, test_score_thresh=test_score_thresh, **kwargs)
        self.guided_loss = GuidedLossScaler(guided_loss_scale)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        sf = cfg.MODEL.SAMPLING_FREE
        ret.update(guided_loss_scale=sf.ROI_GUIDED_LOSS_SCALE,
                   test_score_thresh=sf.ROI_SCORE_THRESH_TEST)
        return ret

    def losses(self, predictions, proposals):
        losses = super().losses(predictions, proposals)
        gt = torch.cat([p.gt_classes for p in proposals]) if proposals else torch.zeros(0)
        num_fg = int(((gt >= 0) & (gt < self.num_classes)).sum())
        # Detectron2 divides by max(all proposals, 1)
        losses["loss_box_reg"] = losses["loss_box_reg"] * (max(len(gt), 1) / max(1, 4 * num_fg))
        get_event_storage().put_scalar("loss_cls_unscaled", float(losses["loss_cls"].detach()))
        losses["loss_cls"] = self.guided_loss(losses["loss_cls"], losses["loss_box_reg"])
        return losses

    def inference(self, predictions: Tuple[torch.Tensor, torch.Tensor],
                  proposals: List[Instances]):
        """Detectron2's :meth:`FastRCNNOutputLayers.inference` through :meth:`detect`."""
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        return self.detect(boxes, scores, [x.image_size for x in proposals])

    def detect(self, boxes: List[torch.Tensor], scores: List[torch.Tensor],
               image_sizes: List[Tuple[int, int]]):
        """
        Detectron2's ``fast_rcnn_inference`` at this predictor's ``test_score_thresh``
        (a float or (K,) per-class tensor), ``test_nms_thresh`` and
        ``test_topk_per_image``, with the exact NMS (:func:`fast_rcnn_inference_exact`).

        Args:
            boxes: per image (Ri, K * 4) or (Ri, 4); scores: per image (Ri, K + 1);
            image_sizes: per image (H, W).
        Returns:
            list[Instances] and, per image, the (ki,) indices of the kept rows.
        """
        instances: List[Instances] = []
        kept: List[torch.Tensor] = []
        for b, s, size in zip(boxes, scores, image_sizes):
            inst, rows = fast_rcnn_inference_exact(b, s, size, self.test_score_thresh,
                                                   self.test_nms_thresh, self.test_topk_per_image)
            instances.append(inst)
            kept.append(rows)
        return instances, kept


@ROI_HEADS_REGISTRY.register()
class SamplingFreeROIHeads(StandardROIHeads):
    """
    :class:`StandardROIHeads` that trains the box head on every proposal (ground truth
    appended as Detectron2 does) instead of 512 sampled at 1:3; the mask and keypoint
    heads are unchanged and train on the foreground proposals.
    """

    # constants when scripting, as Detectron2's export patch declares them on
    # StandardROIHeads (a subclass does not inherit that): the absent heads compile away
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = SamplingFreeFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    def _sample_proposals(self, matched_idxs, matched_labels, gt_classes):
        """All non-ignored proposals, labelled with their class or background."""
        if gt_classes.numel() > 0:
            gt_classes = gt_classes[matched_idxs]
            gt_classes[matched_labels == 0] = self.num_classes
            gt_classes[matched_labels == -1] = -1
        else:
            gt_classes = torch.zeros_like(matched_idxs) + self.num_classes
        keep = torch.nonzero(gt_classes >= 0).squeeze(1)
        return keep, gt_classes[keep]
