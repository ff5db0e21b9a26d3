"""Per-class NMS on each class's own coordinates, through torchvision's public ``nms``."""
import torch
from torchvision.ops import nms

__all__ = ["per_class_nms"]


def per_class_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                  iou_threshold: float) -> torch.Tensor:
    """
    Greedy NMS run separately on the boxes of every class.

    Detectron2's ``batched_nms`` is torchvision's, which for small inputs (up to 1000
    boxes on CPU) runs one NMS on class-offset coordinates instead; the offsets grow
    with the input's largest coordinate, so the float32 IoU of a pair within about 1e-4
    of the threshold depends on the other candidates. Here a box's fate depends only on
    the higher-scored boxes of its own class: one pass over the candidates above a score
    floor, filtered at a higher threshold, equals the pass at that threshold.

    Args:
        boxes: (R, 4) XYXY; scores: (R,); classes: (R,) integer class of each box.
    Returns:
        (k,) int64 indices of the kept boxes, by decreasing score (ties by index).
    """
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for c in torch.unique(classes):
        idx = torch.where(classes == c)[0]
        keep[idx[nms(boxes[idx], scores[idx], iou_threshold)]] = True
    kept = torch.where(keep)[0]
    return kept[scores[kept].sort(descending=True, stable=True)[1]]
