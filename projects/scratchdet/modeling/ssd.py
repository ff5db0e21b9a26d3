"""ScratchDet300: SSD's prediction head, anchors and loss on Detectron2's RetinaNet.

Detectron2's :class:`RetinaNet` meta-architecture flattens each level's predictions on
its own, so a head with a different number of anchors per level (SSD: 4 or 6) plugs in
without changes. :class:`ScratchDetSSD` is that meta-architecture with SSD's loss
(MultiBox: softmax over K + 1 classes with hard negative mining, see
:mod:`scratchdet.modeling.multibox`) or, as an option, Detectron2's focal loss; LazyConfigs
and yacs configs (``MODEL.META_ARCHITECTURE: "ScratchDetSSD"``) build the same model.
"""
import math
from typing import List, Sequence, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.anchor_generator import (
    ANCHOR_GENERATOR_REGISTRY,
    BufferList,
    DefaultAnchorGenerator,
    build_anchor_generator,
)
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage

from ..sampling_free.nms import per_class_nms
from .multibox import SSDMatcher, multibox_loss, stack_targets

__all__ = ["SSDHead", "SSDAnchorGenerator", "ScratchDetSSD", "ssd_num_anchors", "SSD_LOSSES"]

# "multibox": softmax cross-entropy over K + 1 scores (background last) with hard negative
# mining, SSD's and ScratchDet's loss; "focal": K sigmoid scores, Detectron2's RetinaNet loss
SSD_LOSSES = ("multibox", "focal")


def ssd_num_anchors(aspect_ratios: Sequence[Sequence[float]]) -> List[int]:
    """SSD anchors per location: two squares plus a (r, 1/r) pair per extra ratio."""
    return [2 + 2 * len(r) for r in aspect_ratios]


class SSDHead(nn.Module):
    """
    One 3x3 classification conv and one 3x3 box conv per level (not shared across levels,
    as in SSD), each without bias and followed by a BatchNorm, as in the published
    ScratchDet head. The BatchNorm's bias is the prediction's bias. ``norm`` is any name
    of Detectron2's :func:`get_norm` (``"BN"``, ``"SyncBN"``, ``"FrozenBN"``, ``"GN"``
    ...; ``nn.Sequential(conv, norm)``), or ``""`` for plain convs with bias (SSD's).

    ``loss`` sets the scores per anchor: ``"multibox"``, ``num_classes + 1`` softmax
    logits (background last; biases start at 0, as in SSD); ``"focal"``, ``num_classes``
    sigmoid logits whose bias starts at logit(``prior_prob``).

    forward(features: list of (N, C_l, H_l, W_l)) returns two lists:
    logits (N, A_l * S, H_l, W_l) with S = :attr:`num_scores`, and box deltas
    (N, A_l * 4, H_l, W_l).
    """

    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_anchors: Sequence[int],
        norm: str = "BN",
        prior_prob: float = 0.01,
        loss: str = "focal",
    ):
        super().__init__()
        if len(num_anchors) != len(input_shape):
            raise ValueError(
                f"SSDHead: {len(num_anchors)} anchor counts for {len(input_shape)} levels")
        if loss not in SSD_LOSSES:
            raise ValueError(f"SSDHead: loss={loss!r} is not one of {SSD_LOSSES}")
        self.num_classes = num_classes
        self.loss = loss
        self.num_scores = num_classes + (loss == "multibox")
        self.cls_convs = nn.ModuleList()
        self.box_convs = nn.ModuleList()
        for shape, a in zip(input_shape, num_anchors):
            for convs, out in ((self.cls_convs, a * self.num_scores), (self.box_convs, a * 4)):
                try:
                    norm_layer = get_norm(norm, out)
                except KeyError:
                    raise ValueError(
                        f"SSDHead: norm={norm!r} (MODEL.SSD.HEAD_NORM, model.head.norm) is not "
                        "a name of detectron2.layers.get_norm (BN, SyncBN, FrozenBN, GN, ...) "
                        "nor '' (no norm)") from None
                conv = nn.Conv2d(shape.channels, out, 3, padding=1, bias=norm_layer is None)
                nn.init.normal_(conv.weight, std=0.01)
                convs.append(conv if norm_layer is None else nn.Sequential(conv, norm_layer))
        focal_bias = -math.log((1 - prior_prob) / prior_prob)
        self.init_cls_bias(0.0 if loss == "multibox" else focal_bias)

    def cls_bias_params(self) -> List[torch.Tensor]:
        """The tensors that act as the classification logits' bias (one per level)."""
        return [m[-1].bias if isinstance(m, nn.Sequential) else m.bias for m in self.cls_convs]

    @torch.no_grad()
    def init_cls_bias(self, value: float) -> None:
        for b in self.cls_bias_params():
            b.fill_(value)

    def forward(self, features: List[torch.Tensor]):
        logits: List[torch.Tensor] = []
        deltas: List[torch.Tensor] = []
        # enumerate: TorchScript cannot zip a ModuleList with a list
        for i, conv in enumerate(self.cls_convs):
            logits.append(conv(features[i]))
        for i, conv in enumerate(self.box_convs):
            deltas.append(conv(features[i]))
        return logits, deltas


@ANCHOR_GENERATOR_REGISTRY.register()
class SSDAnchorGenerator(DefaultAnchorGenerator):
    """
    SSD's anchors: per level, a square of side ``min_size``, a square of side
    ``sqrt(min_size * max_size)``, and for each ratio r a (w, h) pair
    ``(min_size * sqrt(r), min_size / sqrt(r))`` and its transpose. Centres sit at
    ``(i + offset) * step`` with SSD's steps (8, 16, 32, 64, 100, 300 for SSD300).
    """

    @configurable
    def __init__(self, *, min_sizes, max_sizes, aspect_ratios, strides, offset=0.5):
        if not (len(min_sizes) == len(max_sizes) == len(aspect_ratios) == len(strides)):
            raise ValueError("SSDAnchorGenerator: min_sizes, max_sizes, aspect_ratios and "
                             "strides must have one entry per level")
        super().__init__(
            sizes=[[lo, hi] for lo, hi in zip(min_sizes, max_sizes)],
            aspect_ratios=[list(r) for r in aspect_ratios],
            strides=list(strides),
            offset=offset,
        )

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        a = cfg.MODEL.ANCHOR_GENERATOR
        return {
            "min_sizes": [s[0] for s in a.SIZES],
            "max_sizes": [s[1] for s in a.SIZES],
            "aspect_ratios": a.ASPECT_RATIOS,
            "strides": cfg.MODEL.SSD.STEPS,
            "offset": a.OFFSET,
        }

    def _calculate_anchors(self, sizes, aspect_ratios):
        return BufferList([self._cell(s, r) for s, r in zip(sizes, aspect_ratios)])

    @staticmethod
    def _cell(sizes, ratios) -> torch.Tensor:
        lo, hi = sizes
        wh = [(lo, lo), (math.sqrt(lo * hi),) * 2]
        for r in ratios:
            wh += [(lo * math.sqrt(r), lo / math.sqrt(r)), (lo / math.sqrt(r), lo * math.sqrt(r))]
        return torch.tensor([[-w / 2, -h / 2, w / 2, h / 2] for w, h in wh], dtype=torch.float32)


@META_ARCH_REGISTRY.register()
class ScratchDetSSD(RetinaNet):
    """
    ScratchDet300's detector: Detectron2's :class:`RetinaNet` with an :class:`SSDHead`,
    SSD anchors, and SSD's MultiBox loss (``loss="multibox"``, the default) or
    Detectron2's sigmoid focal loss (``loss="focal"``; the head's ``loss`` must agree,
    the configs interpolate it from the model's).

    MultiBox: anchors labelled by ``anchor_matcher`` (SSD configs: :class:`SSDMatcher`,
    IoU 0.5), :func:`multibox_loss` with ``neg_pos_ratio`` and ``smooth_l1_beta``; at
    inference softmax scores (background dropped), then RetinaNet's decoding: per class
    score threshold ``test_score_thresh``, at most ``test_topk_candidates`` per level,
    per-class NMS at ``test_nms_thresh`` and ``max_detections_per_image`` (SSD300: 0.01,
    0.45, 200). Focal: :class:`RetinaNet`'s sigmoid scores and decoding. Both run the NMS
    through :func:`per_class_nms` on the unclipped boxes (:meth:`inference_single_image`),
    so that a trace keeps the eager detections.

    yacs keys: ``MODEL.BACKBONE.NAME`` (``build_root_resnet_ssd_backbone``),
    ``MODEL.ANCHOR_GENERATOR`` (``NAME: SSDAnchorGenerator``, ``SIZES`` as
    ``[min_size, max_size]`` per level, ``ASPECT_RATIOS`` per level, ``OFFSET``),
    ``MODEL.SSD.STEPS``, ``HEAD_NORM``, ``LOSS`` and ``NEG_POS_RATIO``, and the
    loss / inference keys of ``MODEL.RETINANET`` (``NUM_CLASSES``, ``IN_FEATURES``,
    ``IOU_THRESHOLDS``, ``PRIOR_PROB``, ...). Only :meth:`from_config` needs to differ
    from RetinaNet's for yacs, because ``RetinaNet.from_config`` builds a
    ``RetinaNetHead``, which needs the same number of anchors on every level.
    """

    @configurable
    def __init__(self, *, loss: str = "multibox", neg_pos_ratio: float = 3.0, **kwargs):
        super().__init__(**kwargs)
        if loss not in SSD_LOSSES:
            raise ValueError(f"ScratchDetSSD: loss={loss!r} is not one of {SSD_LOSSES}")
        head_loss = getattr(self.head, "loss", "focal")
        if head_loss != loss:
            raise ValueError(f"ScratchDetSSD: loss={loss!r} but the head's loss is "
                             f"{head_loss!r}; set both (the SSD configs interpolate the "
                             "head's from model.loss)")
        self.loss = loss
        self.neg_pos_ratio = float(neg_pos_ratio)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        r, ssd = cfg.MODEL.RETINANET, cfg.MODEL.SSD
        missing = [f for f in r.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(f"MODEL.RETINANET.IN_FEATURES: {missing} are not outputs of the "
                             f"backbone (it gives {sorted(shapes)})")
        feature_shapes = [shapes[f] for f in r.IN_FEATURES]
        anchor_generator = build_anchor_generator(cfg, feature_shapes)
        head = SSDHead(
            input_shape=feature_shapes,
            num_classes=r.NUM_CLASSES,
            num_anchors=anchor_generator.num_cell_anchors,
            norm=ssd.HEAD_NORM,
            prior_prob=r.PRIOR_PROB,
            loss=ssd.LOSS,
        )
        return {
            "backbone": backbone,
            "head": head,
            "anchor_generator": anchor_generator,
            "box2box_transform": Box2BoxTransform(weights=r.BBOX_REG_WEIGHTS),
            "anchor_matcher": SSDMatcher(r.IOU_THRESHOLDS, r.IOU_LABELS),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "num_classes": r.NUM_CLASSES,
            "head_in_features": r.IN_FEATURES,
            "focal_loss_alpha": r.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": r.FOCAL_LOSS_GAMMA,
            "smooth_l1_beta": r.SMOOTH_L1_LOSS_BETA,
            "box_reg_loss_type": r.BBOX_REG_LOSS_TYPE,
            "test_score_thresh": r.SCORE_THRESH_TEST,
            "test_topk_candidates": r.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": r.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
            "loss": ssd.LOSS,
            "neg_pos_ratio": ssd.NEG_POS_RATIO,
        }

    def forward_training(self, images, features, predictions, gt_instances):
        if self.loss == "focal":
            return super().forward_training(images, features, predictions, gt_instances)
        pred_logits, pred_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes + 1, 4])
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        gt_labels = torch.stack(gt_labels)
        get_event_storage().put_scalar(
            "num_pos_anchors",
            ((gt_labels >= 0) & (gt_labels < self.num_classes)).sum().item() / len(gt_labels))
        gt_deltas = stack_targets(self.box2box_transform, Boxes.cat(anchors).tensor, gt_boxes)
        return multibox_loss(torch.cat(pred_logits, dim=1), torch.cat(pred_deltas, dim=1),
                             gt_labels, gt_deltas, neg_pos_ratio=self.neg_pos_ratio,
                             smooth_l1_beta=self.smooth_l1_beta)

    def forward_inference(self, images: ImageList, features: List[torch.Tensor],
                          predictions: List[List[torch.Tensor]]):
        """RetinaNet's inference, scores by the loss: sigmoid (focal) or softmax with the
        background dropped (MultiBox). Written out rather than through super(), which
        TorchScript cannot call."""
        num_scores = self.num_classes + (self.loss == "multibox")
        pred_logits, pred_deltas = self._transpose_dense_predictions(predictions,
                                                                     [num_scores, 4])
        anchors = self.anchor_generator(features)
        results: List[Instances] = []
        for i, image_size in enumerate(images.image_sizes):
            if self.loss == "focal":
                scores = [x[i].sigmoid() for x in pred_logits]
            else:
                scores = [x[i].softmax(dim=-1)[:, : self.num_classes] for x in pred_logits]
            results.append(self.inference_single_image(
                anchors, scores, [x[i] for x in pred_deltas], image_size))
        return results

    def inference_single_image(self, anchors: List[Boxes], box_cls: List[torch.Tensor],
                               box_delta: List[torch.Tensor], image_size: Tuple[int, int]):
        """RetinaNet's single-image inference with :func:`per_class_nms` (``clip=False``:
        Detectron2's IoUs on the unclipped boxes) in place of ``batched_nms``, which under
        ``torch.jit.trace`` takes another path (one NMS on coordinate-shifted boxes instead
        of a loop over classes) and orders equal scores differently: a trace then kept
        other boxes than the eager model whenever scores tie (saturated softmax scores of
        an early checkpoint). Here equal scores rank by candidate index in both.

        anchors: levels of Boxes (HWA_l, 4); box_cls: levels of (HWA_l, K) scores;
        box_delta: levels of (HWA_l, 4); image_size: (H, W). Returns Instances.
        """
        pred = self._decode_multi_level_predictions(
            anchors, box_cls, box_delta, self.test_score_thresh, self.test_topk_candidates,
            image_size)
        keep = per_class_nms(pred.pred_boxes.tensor, pred.scores, pred.pred_classes,
                             self.test_nms_thresh, image_size, clip=False)
        return pred[keep[: self.max_detections_per_image]]
