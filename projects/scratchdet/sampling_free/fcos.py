"""Sampling-Free FCOS: plain BCE over every location, guided scaling, prior bias,
adaptive thresholds."""
import torch
import torch.nn.functional as F

from fvcore.nn import giou_loss

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage

from ..modeling.fcos import ConfigurableFCOS
from .dense import SamplingFreeDenseMixin
from .point_prior import FCOSPointRule

__all__ = ["SamplingFreeFCOS"]


@META_ARCH_REGISTRY.register()
class SamplingFreeFCOS(SamplingFreeDenseMixin, ConfigurableFCOS):
    """
    Detectron2's :class:`FCOS` trained without sampling heuristics (Chen et al. 2019):

    - ``loss_fcos_cls``: sigmoid binary cross-entropy summed over every location of the
      batch (FCOS ignores none; no focal modulation, no alpha), divided by Detectron2's
      FCOS normaliser (EMA of the positive locations, starting at 300), then
      guided-scaled to ``guided_loss_scale`` (1.0) x ``loss_fcos_loc`` (the GIoU box
      loss); the unscaled value is logged as ``loss_cls_unscaled``;
    - ``loss_fcos_loc`` and ``loss_fcos_ctr`` (centerness BCE on the positives) as
      Detectron2 computes them;
    - the classification bias is set from the data's foreground prior, counted with
      FCOS's own assignment (:class:`~scratchdet.sampling_free.point_prior.FCOSPointRule`;
      :meth:`set_prior`, called by :func:`scratchdet.sampling_free.initialize_priors`);
    - inference: Detectron2's FCOS keeps the candidates whose score
      ``sqrt(sigmoid(cls) x sigmoid(centerness))`` exceeds ``test_score_thresh`` (0.2);
      here that same score is compared with the adaptive threshold(s) carried in
      ``self.prior_state`` (global ``p x C`` or per class), and NMS is per class
      (:func:`~scratchdet.sampling_free.nms.per_class_nms`, on boxes clipped to the image
      for the IoUs; IoU ``test_nms_thresh``, 0.6 as Detectron2's).

    Training refuses to start without a prior.
    """

    @configurable
    def __init__(self, *, guided_loss_scale: float = 1.0, threshold_rule: str = "global",
                 **kwargs):
        super().__init__(**kwargs)
        self._init_sampling_free(guided_loss_scale, threshold_rule)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        sf = cfg.MODEL.SAMPLING_FREE
        ret.update(guided_loss_scale=sf.GUIDED_LOSS_SCALE, threshold_rule=sf.THRESHOLD_RULE)
        return ret

    def prior_heads(self):
        """What the prior estimator needs: (name, anchor generator, FCOS's point rule, C,
        self)."""
        return [("fcos", self.anchor_generator, FCOSPointRule(self.center_sampling_radius),
                 self.num_classes, self)]

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
               pred_centerness):
        """
        anchors: levels of (HW,) point boxes; gt_labels: N x (R,) in {0..K} (K:
        background); pred_logits: levels of (N, HW, K); pred_anchor_deltas: levels of
        (N, HW, 4); gt_boxes: N x (R, 4); pred_centerness: levels of (N, HW, 1).
        """
        if self.training:
            self.prior_state.require("SamplingFreeFCOS")
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos = pos_mask.sum()
        storage = get_event_storage()
        storage.put_scalar("num_pos_anchors", num_pos.item() / num_images)
        normalizer = self._loss_normalizer(num_pos, 300)

        target = F.one_hot(gt_labels, num_classes=self.num_classes + 1)[:, :, :-1]
        loss_cls = F.binary_cross_entropy_with_logits(
            cat(pred_logits, dim=1), target.to(pred_logits[0].dtype), reduction="sum"
        ) / normalizer
        # GIoU of the decoded boxes on the positives, as Detectron2's FCOS computes it
        points = Boxes.cat(anchors).tensor  # (R, 4)
        pred_boxes = torch.stack([self.box2box_transform.apply_deltas(d, points)
                                  for d in cat(pred_anchor_deltas, dim=1)])  # (N, R, 4)
        loss_box_reg = giou_loss(pred_boxes[pos_mask], torch.stack(gt_boxes)[pos_mask],
                                 reduction="sum") / normalizer
        ctrness_targets = self.compute_ctrness_targets(anchors, gt_boxes)  # (N, R)
        pred_centerness = cat(pred_centerness, dim=1).squeeze(dim=2)  # (N, R)
        loss_ctr = F.binary_cross_entropy_with_logits(
            pred_centerness[pos_mask], ctrness_targets[pos_mask], reduction="sum") / normalizer
        storage.put_scalar("loss_cls_unscaled", float(loss_cls.detach()))
        return {"loss_fcos_cls": self.guided_loss(loss_cls, loss_box_reg),
                "loss_fcos_loc": loss_box_reg, "loss_fcos_ctr": loss_ctr}
