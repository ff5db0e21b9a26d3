"""Per-class NMS through torchvision's public ``nms`` on boxes shifted by class offsets fixed
by the image size, and Detectron2's single-image box-head inference with it."""
from typing import Tuple, Union

import torch
from torchvision.ops import nms

from detectron2.structures import Boxes, Instances

__all__ = ["per_class_nms", "fast_rcnn_inference_exact"]

# (H, W): ints, or 0-dim tensors under torch.jit.trace (the annotation is the scripted type)
Size = Tuple[int, int]

# Above this many boxes on CPU (and not tracing), per_class_nms runs torchvision's nms
# class by class, on the same shifted boxes: the CPU kernel's cost grows with the number
# of kept boxes times all boxes, so with many classes one call is the slower for many boxes.
CPU_ONE_CALL_MAX_BOXES = 2000


def per_class_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                  iou_threshold: float, image_size: Size, clip: bool = True) -> torch.Tensor:
    """
    Greedy NMS within each class, as one ``torchvision.ops.nms`` call on shifted boxes.

    For the NMS computation only, the boxes are clipped to the image (as Detectron2's
    box head and RPN, and mmdetection's dense heads, clip decoded boxes before NMS) and
    class c is shifted by ``c * (max(H, W) + 1)`` on all four coordinates, in float64.
    The clipped boxes of a class lie in [0, max(H, W)]^2, so after the shift boxes of
    different classes never overlap, and the shift depends only on the class and the image
    size: a box's fate depends only on the higher-scored boxes of its own class. One pass
    at a score floor, filtered at a higher threshold, is therefore exactly the pass at that
    threshold. Float64 holds the shifted float32 coordinates exactly (for shifts below
    2^24 and coordinates above 1/64), so the IoUs are those of the unshifted clipped boxes
    up to float64 rounding. On CPU, above ``CPU_ONE_CALL_MAX_BOXES`` boxes, the same
    shifted boxes go through ``nms`` class by class, which keeps the same boxes faster
    (every trace and every other device take the one call).

    Relation to Detectron2's ``batched_nms`` (torchvision's): for boxes inside the image
    the kept set can differ only for a pair whose IoU is within float32 rounding of the
    threshold. torchvision computes the IoU in float32, on each class's own coordinates
    (the per-class loop for large inputs) or on coordinates shifted by the largest
    coordinate present (small inputs; there the rounding, about 1e-4 of the IoU at COCO
    sizes, depends on the other candidates). A box extending outside the image enters
    the IoU with its part inside the image; Detectron2's RetinaNet and FCOS do not clip
    before NMS, so for such boxes the kept set can differ more. The boxes themselves are
    not changed: only the returned indices depend on the clipping.

    With ``clip=False`` (ScratchDet300, whose Detectron2 RetinaNet inference does not
    clip before NMS) the IoUs are those of the unclipped boxes: they are translated so
    that the lowest coordinate (or 0) is at 0 and class c is shifted by c x (their span
    + 1), which separates the classes as well; the shift then depends on all the
    candidates, but in float64 the IoUs stay those of the unshifted boxes up to float64
    rounding. The kept set is then that of Detectron2's ``batched_nms`` up to float32
    rounding, and the order is the same whether traced or not (``batched_nms`` takes a
    different path when traced, and orders equal scores arbitrarily).

    Args:
        boxes: (R, 4) XYXY in the image's coordinates (any float dtype).
        scores: (R,); classes: (R,) integer class index (>= 0) of each box.
        iou_threshold: a box is suppressed by a higher-scored kept box of its class whose
            IoU with it exceeds this.
        image_size: (H, W) as ints, or as 0-dim tensors (Detectron2's ``ImageList`` under
            ``torch.jit.trace``), which a trace then keeps as inputs.
        clip: compute the IoUs on the boxes clipped to ``image_size`` (default) or on
            the boxes as they are.
    Returns:
        (k,) int64 indices of the kept boxes, by decreasing score, ties by index.
    """
    if clip:
        h, w = _float64(image_size[0], boxes.device), _float64(image_size[1], boxes.device)
        limits = torch.stack([w, h, w, h])
        clipped = boxes.to(torch.float64).clamp(min=0).minimum(limits)
        offsets = classes.to(torch.float64) * (torch.maximum(h, w) + 1)
    else:
        # the extremes with 0 among them: defined without boxes, traced without a branch
        clipped = boxes.to(torch.float64)
        coords = torch.cat([clipped.flatten(), clipped.new_zeros(1)])
        clipped = clipped - coords.min()
        offsets = classes.to(torch.float64) * (coords.max() - coords.min() + 1)
    # NMS sees strictly decreasing ranks in place of the scores: its own sort then
    # cannot order equal scores differently for different candidate sets, and it returns
    # the kept positions of `order` in increasing order
    order = _descending_order(scores)
    rank = -torch.ones_like(scores, dtype=torch.float64).cumsum(0)
    shifted = clipped[order] + offsets[order, None]
    if not torch.jit.is_scripting():  # (a scripted model takes the one call)
        if (not torch.jit.is_tracing() and boxes.device.type == "cpu"
                and len(order) > CPU_ONE_CALL_MAX_BOXES):
            return order[_nms_class_by_class(shifted, rank, classes[order], iou_threshold)]
    return order[nms(shifted, rank, iou_threshold)]


def _descending_order(scores: torch.Tensor) -> torch.Tensor:
    """(R,) indices by decreasing score, equal scores by increasing index: a stable sort,
    or in an ONNX export (which has no stable sort) a full TopK, which ONNX defines to
    put the lower index first among equal values."""
    if not torch.jit.is_scripting():  # (is_in_onnx_export does not script)
        if torch.onnx.is_in_onnx_export():
            return scores.topk(scores.shape[0])[1]
    return scores.sort(descending=True, stable=True)[1]


def _float64(length: Union[int, torch.Tensor], device: torch.device) -> torch.Tensor:
    """An image side as a 0-dim float64 tensor; a traced tensor stays an input of the
    trace through ``Tensor.to`` (``torch.as_tensor`` warns that it may be a constant)."""
    if isinstance(length, torch.Tensor):
        return length.to(device=device, dtype=torch.float64)
    return torch.tensor(float(length), device=device, dtype=torch.float64)


def _nms_class_by_class(shifted: torch.Tensor, rank: torch.Tensor, classes: torch.Tensor,
                        iou_threshold: float) -> torch.Tensor:
    """
    The kept set of one ``nms(shifted, rank, iou_threshold)`` call, from one call per
    class: each pair of a class gets the same IoU arithmetic on the same values, and
    pairs of different classes do not intersect. On CPU it is faster for many boxes:
    there, ``nms`` compares each kept box with every later box, of any class.

    Args:
        shifted: (R, 4) float64 class-shifted boxes; rank: (R,) strictly decreasing;
        classes: (R,) class of each box.
    Returns:
        (k,) int64 kept positions, increasing.
    """
    by_class = classes.sort(stable=True)[1]  # grouped by class, rank order within
    counts = torch.unique_consecutive(classes[by_class], return_counts=True)[1]
    kept = [idx[nms(shifted[idx], rank[idx], iou_threshold)]
            for idx in by_class.split(counts.tolist())]
    return torch.cat(kept).sort()[0]

def fast_rcnn_inference_exact(boxes: torch.Tensor, scores: torch.Tensor, image_shape: Size,
                              score_thresh: float, nms_thresh: float,
                              topk_per_image: int) -> Tuple[Instances, torch.Tensor]:
    """
    Detectron2's ``fast_rcnn_inference_single_image`` with :func:`per_class_nms` in place
    of ``batched_nms``; everything else is the same: non-finite rows dropped, background
    column dropped, boxes clipped to the image, scores above ``score_thresh`` (a float,
    or a (K,) tensor of per-class thresholds) kept, NMS, the ``topk_per_image`` highest.

    Args:
        boxes: (R, K * 4) class-specific or (R, 4) class-agnostic XYXY boxes.
        scores: (R, K + 1) class probabilities, background last.
        image_shape: (H, W) ints or 0-dim tensors.
    Returns:
        Instances (pred_boxes, scores, pred_classes) and the (k,) indices of their rows
        in ``boxes``, as Detectron2's.
    """
    valid_mask = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not valid_mask.all():
        boxes = boxes[valid_mask]
        scores = scores[valid_mask]
    scores = scores[:, :-1]
    num_bbox_reg_classes = boxes.shape[1] // 4
    boxes = Boxes(boxes.reshape(-1, 4))
    boxes.clip(image_shape)
    boxes = boxes.tensor.view(-1, num_bbox_reg_classes, 4)  # (R, C, 4)

    filter_mask = scores > score_thresh  # (R, K)
    filter_inds = filter_mask.nonzero()  # (R', 2): row, class
    if num_bbox_reg_classes == 1:
        boxes = boxes[filter_inds[:, 0], 0]
    else:
        boxes = boxes[filter_mask]
    scores = scores[filter_mask]

    keep = per_class_nms(boxes, scores, filter_inds[:, 1], nms_thresh, image_shape)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    boxes, scores, filter_inds = boxes[keep], scores[keep], filter_inds[keep]

    result = Instances(image_shape)
    result.pred_boxes = Boxes(boxes)
    result.scores = scores
    result.pred_classes = filter_inds[:, 1]
    return result, filter_inds[:, 0]

