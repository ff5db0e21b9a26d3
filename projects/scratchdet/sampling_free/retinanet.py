"""Sampling-Free RetinaNet: plain BCE over all anchors, guided scaling, prior bias,
adaptive thresholds."""
import logging
from typing import List

import torch
import torch.nn.functional as F

from detectron2.config import configurable
from torchvision.ops.boxes import _batched_nms_vanilla

from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from .guided_loss import GuidedLossScaler
from .prior_state import PriorState, fill_bias

__all__ = ["SamplingFreeRetinaNet", "classification_bias_params"]

logger = logging.getLogger(__name__)


def classification_bias_params(head) -> List[torch.Tensor]:
    """The tensors acting as the classification logits' bias of a dense head."""
    if hasattr(head, "cls_bias_params"):
        return list(head.cls_bias_params())
    if hasattr(head, "cls_score"):
        return [head.cls_score.bias]
    raise TypeError(f"cannot find the classification bias of {type(head).__name__}")


@META_ARCH_REGISTRY.register()
class SamplingFreeRetinaNet(RetinaNet):
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
        self.guided_loss = GuidedLossScaler(guided_loss_scale)
        self.prior_state = PriorState(self.num_classes, self.num_classes, threshold_rule)
        # when set ((K,) tensor), inference keeps every candidate scoring above it instead of
        # applying the adaptive thresholds: the evaluator then filters one set of raw
        # detections at several thresholds (scratchdet.evaluation.score_floor)
        self.score_floor = None

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        sf = cfg.MODEL.SAMPLING_FREE
        ret.update(guided_loss_scale=sf.GUIDED_LOSS_SCALE, threshold_rule=sf.THRESHOLD_RULE,
                   test_nms_thresh=sf.RETINANET_NMS_THRESH_TEST)
        return ret

    # -- prior ----------------------------------------------------------------------
    def prior_heads(self):
        """What the prior estimator needs: (name, anchor generator, matcher, C, self)."""
        return [("retinanet", self.anchor_generator, self.anchor_matcher, self.num_classes, self)]

    def prior_bias_params(self) -> List[torch.Tensor]:
        """The classification bias tensors :meth:`set_prior` sets to logit(p)."""
        return classification_bias_params(self.head)

    def set_prior(self, counts, set_bias: bool = True) -> None:
        """Store the counted prior (the adaptive thresholds follow from it) and, with
        ``set_bias``, set the classification bias to logit(p). A run fine-tuning a
        checkpoint whose bias loaded keeps that trained bias (``set_bias=False``)."""
        self.prior_state.set(counts)
        if set_bias:
            fill_bias(self.prior_bias_params(), counts.prior)

    # -- training -------------------------------------------------------------------
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
        normalizer = self._loss_normalizer(num_pos)

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

    def _loss_normalizer(self, num_pos: torch.Tensor) -> float:
        """
        Detectron2's EMA of the number of positive anchors (initial value 100), made
        independent of the number of processes: each of W processes divides by the EMA
        of the positives of the *whole* batch over W (initial value 100 / W). The mean
        of the processes' losses, and DDP's mean of their gradients, are then those of
        one process on the whole batch (Detectron2 divides by each process's own count,
        and early on, by 100 whatever the batch). With one process it is Detectron2's.
        """
        world = comm.get_world_size()
        total = num_pos.detach().float()
        if world > 1:
            total = total.clone()
            torch.distributed.all_reduce(total)
        return self._ema_update("loss_normalizer", max(total.item(), 1.0) / world, 100 / world)

    # -- inference ------------------------------------------------------------------
    def score_thresholds(self) -> torch.Tensor:
        """(K,) thresholds used at inference: adaptive when the prior is set, else
        ``test_score_thresh``; ``score_floor`` replaces both while it is set."""
        if self.score_floor is not None:
            return self.score_floor
        if self.prior_state.is_set:
            return self.prior_state.thresholds()
        return torch.full((self.num_classes,), float(self.test_score_thresh),
                          device=self.prior_state.score_thresholds.device)

    def inference_single_image(self, anchors, box_cls, box_delta, image_size):
        # pred_scores (HWA, K) > thresholds (K,) broadcasts: one threshold per class
        pred = self._decode_multi_level_predictions(
            anchors, box_cls, box_delta, self.score_thresholds(), self.test_topk_candidates,
            image_size)
        # Per-class NMS on the boxes' own coordinates. Detectron2's batched_nms is
        # torchvision's, which for small inputs (up to 1000 boxes on CPU) runs one NMS on
        # class-offset coordinates instead; the offsets grow with the input's largest
        # coordinate, so the float32 IoU of a pair within about 1e-4 of the NMS threshold
        # depended on the other candidates, and a box could be kept at a high score
        # threshold yet suppressed in a pass at a lower one. Here a box's fate depends
        # only on the higher-scored boxes of its class: one pass at a score floor,
        # filtered, is exactly the pass at a higher threshold (see ``score_floor``).
        keep = _batched_nms_vanilla(pred.pred_boxes.tensor.float(), pred.scores,
                                    pred.pred_classes, self.test_nms_thresh)
        return pred[keep[: self.max_detections_per_image]]
