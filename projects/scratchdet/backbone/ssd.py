"""SSD-style extra stages on top of a Root-ResNet (ScratchDet300).

For a 300x300 input the published Root-ResNet-34 (root + 2x2/2 max-pool) gives res4 at
38x38 and res5 at 19x19; four extra residual stages continue with 10, 5, 3 and 1, the six
maps SSD300 predicts from. The first extra stages halve the map (3x3, stride 2, padding 1:
19 -> 10 -> 5); the last two are "valid" 3x3 convs (stride 1, no padding: 5 -> 3 -> 1),
which is what SSD's own conv10_2 / conv11_2 do and what the released ScratchDet code
misses.
"""
import math
from typing import List, Optional, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F

from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from .root_resnet import build_root_resnet_backbone

__all__ = ["SSDExtraBlock", "SSDBackbone", "ssd_extra_layout", "build_root_resnet_ssd_backbone",
           "apply_ssd_downsampling_study"]


def ssd_extra_layout(num_extra: int) -> List[Tuple[int, int]]:
    """(stride, padding) of each extra stage: halving stages, then two valid 3x3 stages."""
    if num_extra < 0:
        raise ValueError(f"num_extra must be >= 0, got {num_extra}")
    valid = min(2, num_extra)
    return [(2, 1)] * (num_extra - valid) + [(1, 0)] * valid


class SSDExtraBlock(CNNBlockBase):
    """
    A BasicBlock-shaped residual block whose first conv may be strided or unpadded.

    Input (N, C_in, H, W) -> output (N, C_out, H', W') with
    ``H' = (H + 2 * padding - 3) // stride + 1``. The shortcut is a projection with the
    same output size (1x1 for padded blocks, 3x3 valid for unpadded ones).
    """

    def __init__(self, in_channels, out_channels, *, stride=2, padding=1, norm="BN"):
        super().__init__(in_channels, out_channels, stride)
        norm = norm if norm not in (None, "none") else ""
        bias = norm == ""
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride=stride, padding=padding,
                            bias=bias, norm=get_norm(norm, out_channels))
        self.conv2 = Conv2d(out_channels, out_channels, 3, stride=1, padding=1,
                            bias=bias, norm=get_norm(norm, out_channels))
        sk = 1 if padding == 1 else 3
        self.shortcut = Conv2d(in_channels, out_channels, sk, stride=stride,
                               padding=(sk // 2) if padding == 1 else 0,
                               bias=bias, norm=get_norm(norm, out_channels))
        for layer in (self.conv1, self.conv2, self.shortcut):
            weight_init.c2_msra_fill(layer)

    def forward(self, x):
        out = self.conv2(F.relu_(self.conv1(x)))
        return F.relu_(out + self.shortcut(x))


class SSDBackbone(Backbone):
    """
    ``bottom_up`` features named in ``in_features`` followed by extra stages, each fed by
    the previous map. Outputs ``in_features + ["extra1", ...]``; an extra stage's stride
    is reported as twice the previous one (nominal: SSD's anchors use their own steps,
    8, 16, 32, 64, 100, 300 for SSD300).
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: Sequence[str] = ("res4", "res5"),
        extra_channels: Sequence[int] = (128, 128, 128, 128),
        extra_layout: Optional[Sequence[Tuple[int, int]]] = None,
        norm="BN",
    ):
        super().__init__()
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(f"SSDBackbone: in_features {missing} not produced by bottom_up "
                             f"(it gives {sorted(shapes)})")
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        if extra_layout is None:
            extra_layout = ssd_extra_layout(len(extra_channels))
        if len(extra_layout) != len(extra_channels):
            raise ValueError("SSDBackbone: extra_layout and extra_channels differ in length")
        self._out_features = list(in_features)
        self._out_feature_channels = {f: shapes[f].channels for f in in_features}
        self._out_feature_strides = {f: shapes[f].stride for f in in_features}
        in_ch = shapes[in_features[-1]].channels
        stride = shapes[in_features[-1]].stride
        self.extras = []
        for i, (ch, (s, p)) in enumerate(zip(extra_channels, extra_layout)):
            name = f"extra{i + 1}"
            block = SSDExtraBlock(in_ch, ch, stride=s, padding=p, norm=norm)
            self.add_module(name, block)
            self.extras.append(name)
            stride *= 2
            self._out_features.append(name)
            self._out_feature_channels[name] = ch
            self._out_feature_strides[name] = stride
            in_ch = ch

    def forward(self, x):
        """x: (N, 3, H, W) -> dict of (N, C_k, H_k, W_k) for every output feature."""
        feats = self.bottom_up(x)
        out = {f: feats[f] for f in self.in_features}
        y = out[self.in_features[-1]]
        for name in self.extras:
            y = getattr(self, name)(y)
            out[name] = y
        return out

    def output_shape(self):
        return {
            f: ShapeSpec(channels=self._out_feature_channels[f],
                         stride=self._out_feature_strides[f])
            for f in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_root_resnet_ssd_backbone(cfg, input_shape: ShapeSpec):
    """yacs entry point: Root-ResNet + ``MODEL.SSD.EXTRA_CHANNELS`` extra stages."""
    bottom_up = build_root_resnet_backbone(cfg, input_shape)
    return SSDBackbone(
        bottom_up,
        in_features=cfg.MODEL.SSD.IN_FEATURES,
        extra_channels=cfg.MODEL.SSD.EXTRA_CHANNELS,
        norm=cfg.MODEL.ROOT_RESNET.NORM,
    )


_STAGES = ["res2", "res3", "res4", "res5"]


def apply_ssd_downsampling_study(model, study: str, first_stride: int = 8,
                                 num_maps: int = 6) -> List[str]:
    """
    Turn a ScratchDet SSD model config (a LazyConfig ``ScratchDetSSD`` node with a
    Root-ResNet ``SSDBackbone``) into a stem setting of ``DOWNSAMPLING_STUDY`` (the
    paper's Table 4) on ResNet-18, in place; returns the stages fed to the head.

    The SSD maps start at the ResNet stage of stride ``first_stride`` (8: 38x38 for a
    300x300 input), so the ``num_maps`` maps keep their sizes whatever the stem: the
    stem's total stride 4, 2 or 1 makes that stage res3, res4 or res5 (for
    ``first_stride`` 8), and extra stages of the config's extra width fill up the maps.
    """
    from .root_resnet import DOWNSAMPLING_STUDY

    s = DOWNSAMPLING_STUDY[study]
    stem_stride = s["stem_stride"] * (1 if s["stem_pool"] == "none" else 2)
    first = int(math.log2(first_stride // stem_stride)) if first_stride >= stem_stride else -1
    if first not in range(len(_STAGES)) or stem_stride * 2 ** first != first_stride:
        raise ValueError(f"{study}: no ResNet stage at stride {first_stride} (stem stride "
                         f"{stem_stride})")
    bottom_up = model.backbone.bottom_up
    for k, v in s.items():
        bottom_up[k] = v
    bottom_up.depth = 18
    res2 = int(bottom_up.get("res2_out_channels", 0) or 64)
    widths = {name: res2 * 2 ** i for i, name in enumerate(_STAGES)}
    stages = _STAGES[first:]
    extra = int(model.backbone.extra_channels[0])
    extras = [extra] * (num_maps - len(stages))
    bottom_up.out_features = stages
    model.backbone.in_features = stages
    model.backbone.extra_channels = extras
    model.head.input_shape = [ShapeSpec(channels=widths[f]) for f in stages] + \
        [ShapeSpec(channels=extra)] * len(extras)
    model.head_in_features = stages + [f"extra{i + 1}" for i in range(len(extras))]
    return stages
