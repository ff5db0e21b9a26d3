"""Sampling-Free Cascade R-CNN: every cascade stage trains on every labelled proposal."""
from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import CascadeROIHeads

from .rcnn import SamplingFreeFastRCNNOutputLayers, SamplingFreeROIHeads

__all__ = ["SamplingFreeCascadeROIHeads"]


@ROI_HEADS_REGISTRY.register()
class SamplingFreeCascadeROIHeads(CascadeROIHeads):
    """
    Detectron2's :class:`CascadeROIHeads` trained the Sampling-Free way.

    - Stage 0 trains on every proposal of the RPN, ground truth appended
      (``proposal_append_gt``), each labelled by the stage's matcher (class or
      background; proposals the matcher ignores are left out), instead of
      ``batch_size_per_image`` sampled at ``positive_fraction``: for R proposals and
      G ground-truth boxes of an image, R + G minus the ignored ones.
    - Stage k > 0 trains, as in Detectron2, on stage k-1's regressed boxes of all of
      stage k-1's proposals, relabelled by stage k's matcher; boxes that clipping to the
      image leaves empty are dropped, as Detectron2 drops them. Without sampling at
      stage 0 these are all proposals, not 512 per image.
    - Every stage's box predictor is a :class:`SamplingFreeFastRCNNOutputLayers`: softmax
      cross-entropy guided-scaled to ``guided_loss_scale`` (2.0) x that stage's box loss,
      the box loss the mean over the foreground proposals' coordinates. Training
      logs ``loss_cls_stage{k}`` (= 2.0 x ``loss_box_reg_stage{k}``) and the unscaled
      cross-entropy as ``stage{k}/loss_cls_unscaled``.
    - Inference is Detectron2's: class scores averaged over the stages, boxes of the last
      stage, filtered at the last stage's ``test_score_thresh`` (1e-4) and NMS, here the
      exact NMS of that predictor's :meth:`~SamplingFreeFastRCNNOutputLayers.detect`; that
      predictor is :func:`scratchdet.evaluation.detection_head` of the model.

    Mask and keypoint heads, if any, are Detectron2's and train on the foreground of the
    stage-0 proposals (as in :class:`CascadeROIHeads`).
    """

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        stock = [k for k, p in enumerate(self.box_predictor)
                 if not isinstance(p, SamplingFreeFastRCNNOutputLayers)]
        if stock:
            # unsampled plain cross-entropy without guided scaling swamps the box loss
            raise TypeError(
                f"SamplingFreeCascadeROIHeads: the box predictors of stages {stock} are not "
                "SamplingFreeFastRCNNOutputLayers; every stage trains on all proposals and "
                "needs its guided-scaled loss")

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        weights = cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
        ret["box_predictors"] = [
            SamplingFreeFastRCNNOutputLayers(cfg, head.output_shape,
                                             box2box_transform=Box2BoxTransform(weights=w))
            for head, w in zip(ret["box_heads"], weights)
        ]
        return ret

    # stage 0: every labelled proposal, by the rule of the Sampling-Free box head
    _sample_proposals = SamplingFreeROIHeads._sample_proposals

    def _forward_box(self, features, proposals, targets=None):
        """Training: Detectron2's. Inference: Detectron2's stage loop and score average,
        then the last predictor's :meth:`~SamplingFreeFastRCNNOutputLayers.detect` in
        place of ``fast_rcnn_inference``. Returns list[Instances] at inference."""
        if self.training:
            return super()._forward_box(features, proposals, targets)
        features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        scores_per_stage, boxes = [], None
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals = self._create_proposals_from_boxes(boxes, image_sizes)
            predictions = self._run_stage(features, proposals, k)
            boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            scores_per_stage.append(self.box_predictor[k].predict_probs(predictions, proposals))
        # (Ri, K + 1) per image, averaged over the stages in Detectron2's order of operations
        scores = [sum(list(per_image)) * (1.0 / self.num_cascade_stages)
                  for per_image in zip(*scores_per_stage)]
        return self.box_predictor[-1].detect(boxes, scores, image_sizes)[0]
