"""SSD's MultiBox loss and matching, as ScratchDet trains them (Liu et al. 2016; Zhu et
al. 2019, whose Caffe and mmdetection releases both train this loss).

- Matching (:class:`SSDMatcher`): every ground truth first gets the anchor ("prior")
  that overlaps it most, then every anchor whose best IoU is at least the threshold
  (0.5) is matched to that best ground truth.
- Loss (:func:`multibox_loss`): softmax cross-entropy over K foreground classes plus
  background on the positives and on the hardest negatives (``neg_pos_ratio`` x the
  image's positives, by cross-entropy), smooth-L1 on the positives' box deltas, both
  summed over the batch and divided by its number of positives.
"""
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from fvcore.nn import smooth_l1_loss

from detectron2.modeling.matcher import Matcher

__all__ = ["SSDMatcher", "hard_negative_mask", "multibox_loss"]


class SSDMatcher(Matcher):
    """
    Detectron2's :class:`Matcher` with SSD's rule for ground truth that no anchor reaches
    at the threshold. Detectron2's low-quality rule (``allow_low_quality_matches``) makes
    the anchors tied at a ground truth's best IoU positive but leaves each matched to the
    ground truth *it* overlaps most, so a box whose best anchor overlaps another box more
    gets no anchor at all. SSD (and this matcher) assigns each ground truth's best anchor
    to that ground truth, overriding the anchor's own best match; when two ground truths
    share a best anchor, the later one keeps it (``ssd.pytorch``'s ``match``). A ground
    truth that overlaps no anchor at all (IoU 0) is left unmatched.

    Call: ``(G, R)`` IoU matrix -> ``matches`` (R,) int64 index of the matched ground
    truth and ``match_labels`` (R,) int8 from ``labels`` (1: positive).
    """

    def __init__(self, thresholds: Sequence[float] = (0.5,), labels: Sequence[int] = (0, 1)):
        super().__init__(list(thresholds), list(labels), allow_low_quality_matches=False)

    def __call__(self, match_quality_matrix: torch.Tensor):
        matches, match_labels = super().__call__(match_quality_matrix)
        if match_quality_matrix.numel() == 0:
            return matches, match_labels
        best_iou, best_anchor = match_quality_matrix.max(dim=1)  # (G,)
        for g in torch.nonzero(best_iou > 0).flatten().tolist():
            matches[best_anchor[g]] = g
            match_labels[best_anchor[g]] = 1
        return matches, match_labels


def hard_negative_mask(cls_loss: torch.Tensor, negatives: torch.Tensor,
                       num_negatives: torch.Tensor) -> torch.Tensor:
    """
    The hardest negatives of each image.

    Args:
        cls_loss: (N, R) per-anchor classification loss (no gradient needed).
        negatives: (N, R) bool, the anchors that may be mined (matched to background).
        num_negatives: (N,) how many to keep per image; capped at the image's negatives.

    Returns:
        (N, R) bool: per image, the ``min(num_negatives, #negatives)`` negatives of
        highest ``cls_loss`` (ties broken by anchor index).
    """
    n, r = cls_loss.shape
    keep = torch.minimum(num_negatives, negatives.sum(dim=1))
    ranked = cls_loss.detach().masked_fill(~negatives, float("-inf"))
    order = ranked.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(r, device=order.device).expand(n, r))
    return (rank < keep[:, None]) & negatives


def multibox_loss(pred_logits: torch.Tensor, pred_deltas: torch.Tensor,
                  gt_labels: torch.Tensor, gt_deltas: torch.Tensor, *,
                  neg_pos_ratio: float = 3.0, smooth_l1_beta: float = 1.0
                  ) -> Dict[str, torch.Tensor]:
    """
    SSD's MultiBox loss over a batch.

    Args:
        pred_logits: (N, R, K + 1) class logits, background last.
        pred_deltas: (N, R, 4) predicted box deltas.
        gt_labels: (N, R) int64: 0..K-1 foreground class, K background, -1 ignored
            (neither positive nor mined).
        gt_deltas: (N, R, 4) target deltas of the matched ground truth (read at the
            positives only; other rows may hold anything, even inf).
        neg_pos_ratio: negatives kept per positive, per image (SSD: 3); an image without
            positives keeps none.
        smooth_l1_beta: the smooth-L1 transition point (SSD: 1.0).

    Returns:
        ``loss_cls``: cross-entropy summed over the positives and the kept negatives,
        ``loss_box_reg``: smooth-L1 summed over the positives' 4 deltas, both divided by
        the number of positives in the batch (by 1 when there is none).
    """
    k = pred_logits.shape[-1] - 1
    positives = (gt_labels >= 0) & (gt_labels < k)
    ce = F.cross_entropy(pred_logits.flatten(0, 1), gt_labels.clamp(min=0).flatten(),
                         reduction="none").view_as(gt_labels)
    num_pos = positives.sum(dim=1)
    mined = hard_negative_mask(ce, gt_labels == k,
                               torch.floor(num_pos * float(neg_pos_ratio)).long())
    normalizer = max(int(num_pos.sum()), 1)
    loss_box = smooth_l1_loss(pred_deltas[positives], gt_deltas[positives], smooth_l1_beta,
                              reduction="sum")
    return {"loss_cls": ce[positives | mined].sum() / normalizer,
            "loss_box_reg": loss_box / normalizer}


def stack_targets(box2box_transform, anchors: torch.Tensor,
                  gt_boxes: List[torch.Tensor]) -> torch.Tensor:
    """(N, R, 4) deltas from the (R, 4) ``anchors`` to each image's matched (R, 4) boxes."""
    return torch.stack([box2box_transform.get_deltas(anchors, b) for b in gt_boxes])
