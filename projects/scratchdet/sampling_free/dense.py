"""What the Sampling-Free dense detectors (RetinaNet, FCOS) share: prior state and bias,
guided scaling, the process-independent loss normaliser, and inference at the adaptive
thresholds with per-class NMS."""
from typing import List, Tuple

import torch

from detectron2.structures import Boxes
from detectron2.utils import comm

from .guided_loss import GuidedLossScaler
from .nms import per_class_nms
from .prior_state import PriorState, fill_bias

__all__ = ["SamplingFreeDenseMixin", "classification_bias_params"]


def classification_bias_params(head) -> List[torch.Tensor]:
    """The tensors acting as the classification logits' bias of a dense head."""
    if hasattr(head, "cls_bias_params"):
        return list(head.cls_bias_params())
    if hasattr(head, "cls_score"):
        return [head.cls_score.bias]
    raise TypeError(f"cannot find the classification bias of {type(head).__name__}")


class SamplingFreeDenseMixin:
    """
    Mixed into a Detectron2 :class:`DenseDetector` subclass (``num_classes``, ``head``,
    ``test_score_thresh``, ``test_nms_thresh``, ``max_detections_per_image``,
    ``_decode_multi_level_predictions`` and ``_ema_update``), after ``__init__`` has run
    :meth:`_init_sampling_free`.
    """

    def _init_sampling_free(self, guided_loss_scale: float, threshold_rule: str) -> None:
        self.guided_loss = GuidedLossScaler(guided_loss_scale)
        self.prior_state = PriorState(self.num_classes, self.num_classes, threshold_rule)
        # when set ((K,) tensor), inference keeps every candidate scoring above it instead of
        # applying the adaptive thresholds: the evaluator then filters one set of raw
        # detections at several thresholds (scratchdet.evaluation.score_floor)
        self.score_floor = None

    # -- prior ----------------------------------------------------------------------
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
    def _loss_normalizer(self, num_pos: torch.Tensor, initial: float) -> float:
        """
        Detectron2's EMA of the number of positive anchors (starting at ``initial``: 100
        for RetinaNet, 300 for FCOS), made independent of the number of processes: each
        of W processes divides by the EMA of the positives of the *whole* batch over W
        (initial value ``initial / W``). The mean of the processes' losses, and DDP's
        mean of their gradients, are then those of one process on the whole batch
        (Detectron2 divides by each process's own count, and early on, by ``initial``
        whatever the batch). With one process it is Detectron2's.
        """
        world = comm.get_world_size()
        total = num_pos.detach().float()
        if world > 1:
            total = total.clone()
            torch.distributed.all_reduce(total)
        return self._ema_update("loss_normalizer", max(total.item(), 1.0) / world,
                                initial / world)

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

    def inference_single_image(self, anchors: List[Boxes], box_cls: List[torch.Tensor],
                               box_delta: List[torch.Tensor], image_size: Tuple[int, int]):
        """Detectron2's decoding with :meth:`score_thresholds` in place of
        ``test_score_thresh`` ((HWA, K) scores > (K,) thresholds: one per class), then
        :func:`per_class_nms` (its IoUs on the boxes clipped to ``image_size``; the
        returned boxes are not clipped, ``detector_postprocess`` clips them): a box's fate
        depends only on the higher-scored boxes of its class, so one pass at a score
        floor, filtered, is exactly the pass at a higher threshold (see ``score_floor``)."""
        # the (K,) thresholds as scores set to 0 below them, then Detectron2's decoding at
        # 0.0 (score > 0): the same candidates (thresholds are >= 0), and the float
        # threshold Detectron2's decoding is typed with, which TorchScript needs
        thresholds = self.score_thresholds()
        box_cls = [torch.where(s > thresholds, s, torch.zeros_like(s)) for s in box_cls]
        pred = self._decode_multi_level_predictions(
            anchors, box_cls, box_delta, 0.0, self.test_topk_candidates, image_size)
        keep = per_class_nms(pred.pred_boxes.tensor, pred.scores, pred.pred_classes,
                             self.test_nms_thresh, image_size)
        return pred[keep[: self.max_detections_per_image]]
