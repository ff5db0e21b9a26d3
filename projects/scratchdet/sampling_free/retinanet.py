"""Sampling-Free RetinaNet: plain BCE over all anchors, guided scaling, prior bias,
adaptive thresholds."""
import logging

import torch
import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.utils.events import get_event_storage

from .dense import SamplingFreeDenseMixin, classification_bias_params

__all__ = ["SamplingFreeRetinaNet", "classification_bias_params"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class SamplingFreeRetinaNet(SamplingFreeDenseMixin, RetinaNet):
    """
    Detectron2's :class:`RetinaNet` trained without sampling heuristics (Chen et al. 2019):

    - ``loss_cls``: sigmoid binary cross-entropy summed over every non-ignored anchor
      (no focal modulation, no alpha), normalised like Detectron2's, then guided-scaled to
      ``guided_loss_scale`` x ``loss_box_reg`` (the unscaled value is logged as
      ``loss_cls_unscaled``);
    - the classification bias is set from the data's foreground prior
      (:meth:`set_prior`, called by :func:`scratchdet.sampling_free.initialize_priors`
      before training);
    - inference keeps candidates above the adaptive threshold(s) carried in
      ``self.prior_state`` (global ``p x C`` or per class), NMS IoU 0.55 by default.

    Training refuses to start without a prior, so a model can never silently train with
    the focal-loss bias.
    """

    @configurable
    def __init__(self, *, guided_loss_scale: float = 1.0, threshold_rule: str = "global",
                 test_nms_thresh: float = 0.55, **kwargs):
        super().__init__(test_nms_thresh=test_nms_thresh, **kwargs)
        self._init_sampling_free(guided_loss_scale, threshold_rule)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        sf = cfg.MODEL.SAMPLING_FREE
        ret.update(guided_loss_scale=sf.GUIDED_LOSS_SCALE, threshold_rule=sf.THRESHOLD_RULE,
                   test_nms_thresh=sf.RETINANET_NMS_THRESH_TEST)
        return ret

    def prior_heads(self):
        """What the prior estimator needs: (name, anchor generator, matcher, C, self)."""
        return [("retinanet", self.anchor_generator, self.anchor_matcher, self.num_classes, self)]

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """gt_labels: N x (R,) in {-1, 0..K}; pred_logits: levels of (N, HWA, K)."""
        if self.training:
            self.prior_state.require("SamplingFreeRetinaNet")
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)
        valid_mask = gt_labels >= 0
        pos_mask = valid_mask & (gt_labels != self.num_classes)
        num_pos = pos_mask.sum()
        storage = get_event_storage()
        storage.put_scalar("num_pos_anchors", num_pos.item() / num_images)
        normalizer = self._loss_normalizer(num_pos, 100)

        target = F.one_hot(gt_labels[valid_mask], num_classes=self.num_classes + 1)[:, :-1]
        loss_cls = F.binary_cross_entropy_with_logits(
            cat(pred_logits, dim=1)[valid_mask], target.to(pred_logits[0].dtype),
            reduction="sum") / normalizer
        loss_box_reg = _dense_box_regression_loss(
            anchors, self.box2box_transform, pred_anchor_deltas, gt_boxes, pos_mask,
            box_reg_loss_type=self.box_reg_loss_type, smooth_l1_beta=self.smooth_l1_beta,
        ) / normalizer
        storage.put_scalar("loss_cls_unscaled", float(loss_cls.detach()))
        return {"loss_cls": self.guided_loss(loss_cls, loss_box_reg), "loss_box_reg": loss_box_reg}
