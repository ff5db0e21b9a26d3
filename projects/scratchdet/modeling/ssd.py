"""SSD300-style prediction head and anchors for ScratchDet, on Detectron2's RetinaNet.

Detectron2's :class:`RetinaNet` meta-architecture flattens each level's predictions on
its own, so a head with a different number of anchors per level (SSD: 4 or 6) plugs in
without changes; only the head and the anchor generator are SSD-specific. LazyConfigs
compose ``RetinaNet(head=SSDHead(...), anchor_generator=SSDAnchorGenerator(...))``; yacs
configs name :class:`ScratchDetSSD` (``MODEL.META_ARCHITECTURE``), the same model.
"""
import math
from typing import List, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.anchor_generator import (
    ANCHOR_GENERATOR_REGISTRY,
    BufferList,
    DefaultAnchorGenerator,
    build_anchor_generator,
)
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import RetinaNet

__all__ = ["SSDHead", "SSDAnchorGenerator", "ScratchDetSSD", "ssd_num_anchors"]


def ssd_num_anchors(aspect_ratios: Sequence[Sequence[float]]) -> List[int]:
    """SSD anchors per location: two squares plus a (r, 1/r) pair per extra ratio."""
    return [2 + 2 * len(r) for r in aspect_ratios]


class SSDHead(nn.Module):
    """
    One 3x3 classification conv and one 3x3 box conv per level (not shared across levels,
    as in SSD), each without bias and followed by a BatchNorm, as in the published
    ScratchDet head. The BatchNorm's bias is the prediction's bias and receives the
    prior-probability initialisation.

    forward(features: list of (N, C_l, H_l, W_l)) returns two lists:
    logits (N, A_l * num_classes, H_l, W_l) and box deltas (N, A_l * 4, H_l, W_l).
    """

    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_anchors: Sequence[int],
        norm: str = "BN",
        prior_prob: float = 0.01,
    ):
        super().__init__()
        if len(num_anchors) != len(input_shape):
            raise ValueError(
                f"SSDHead: {len(num_anchors)} anchor counts for {len(input_shape)} levels")
        self.num_classes = num_classes
        use_bn = norm in ("BN", "SyncBN")
        bn = nn.BatchNorm2d if norm == "BN" else nn.SyncBatchNorm
        self.cls_convs = nn.ModuleList()
        self.box_convs = nn.ModuleList()
        for shape, a in zip(input_shape, num_anchors):
            for convs, out in ((self.cls_convs, a * num_classes), (self.box_convs, a * 4)):
                conv = nn.Conv2d(shape.channels, out, 3, padding=1, bias=not use_bn)
                nn.init.normal_(conv.weight, std=0.01)
                convs.append(nn.Sequential(conv, bn(out)) if use_bn else conv)
        self.init_cls_bias(-math.log((1 - prior_prob) / prior_prob))

    def cls_bias_params(self) -> List[torch.Tensor]:
        """The tensors that act as the classification logits' bias (one per level)."""
        return [m[-1].bias if isinstance(m, nn.Sequential) else m.bias for m in self.cls_convs]

    @torch.no_grad()
    def init_cls_bias(self, value: float) -> None:
        for b in self.cls_bias_params():
            b.fill_(value)

    def forward(self, features: List[torch.Tensor]):
        logits = [conv(f) for conv, f in zip(self.cls_convs, features)]
        deltas = [conv(f) for conv, f in zip(self.box_convs, features)]
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
    Detectron2's :class:`RetinaNet` with an :class:`SSDHead`, for yacs configs
    (``MODEL.META_ARCHITECTURE: "ScratchDetSSD"``). It adds no behaviour: only
    :meth:`from_config` differs, because ``RetinaNet.from_config`` builds a
    ``RetinaNetHead``, which needs the same number of anchors on every level. Its modules
    (``backbone``, ``head``, ``anchor_generator``) and so its checkpoints are those of the
    LazyConfig model ``RetinaNet(backbone=SSDBackbone, head=SSDHead, ...)``.

    Keys: ``MODEL.BACKBONE.NAME`` (``build_root_resnet_ssd_backbone``),
    ``MODEL.ANCHOR_GENERATOR`` (``NAME: SSDAnchorGenerator``, ``SIZES`` as
    ``[min_size, max_size]`` per level, ``ASPECT_RATIOS`` per level, ``OFFSET``),
    ``MODEL.SSD.STEPS`` and ``MODEL.SSD.HEAD_NORM``, and the loss / inference keys of
    ``MODEL.RETINANET`` (``NUM_CLASSES``, ``IN_FEATURES``, ``PRIOR_PROB``, ...).
    """

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        r = cfg.MODEL.RETINANET
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
            norm=cfg.MODEL.SSD.HEAD_NORM,
            prior_prob=r.PRIOR_PROB,
        )
        return {
            "backbone": backbone,
            "head": head,
            "anchor_generator": anchor_generator,
            "box2box_transform": Box2BoxTransform(weights=r.BBOX_REG_WEIGHTS),
            "anchor_matcher": Matcher(r.IOU_THRESHOLDS, r.IOU_LABELS,
                                      allow_low_quality_matches=True),
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
        }
