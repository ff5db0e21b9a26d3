"""Root-ResNet (ScratchDet, Zhu et al. CVPR 2019) as a Detectron2 backbone.

A Root-ResNet is a ResNet whose stem ("root") is a stack of small stride-1 convs instead
of the 7x7/2 conv + 3x3/2 max-pool, so that less resolution is thrown away before the
first residual stage. Every element of the stem is a parameter, so the paper's whole
downsampling study is a set of settings of one class:

=====================  ===========  ===========  ==========  ================
setting                stem_kernel  stem_stride  stem_convs  stem_pool
=====================  ===========  ===========  ==========  ================
ResNet-18 (stock)      7            2            1           "max3x3"
no max-pool            7            2            1           "none"
conv1 stride 1         7            1            1           "none"
Root-ResNet-18         3            1            3           "none"
Root-ResNet (SSD300)   3            1            3           "max2x2"
=====================  ===========  ===========  ==========  ================

The residual stages are Detectron2's own :class:`BasicBlock` / :class:`BottleneckBlock`
assembled by :meth:`ResNet.make_stage`; the module *is* a Detectron2 :class:`ResNet`, so
``freeze``, ``output_shape`` and checkpoints behave as users expect.
"""
from typing import List, Optional, Sequence

import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F
from torch import nn

from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, ShapeSpec
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, ResNet

__all__ = [
    "RootStem",
    "RootResNet",
    "STEM_POOLS",
    "build_root_resnet_backbone",
    "init_from_scratch",
    "DOWNSAMPLING_STUDY",
]

# depth -> (block class, blocks per stage)
_DEPTHS = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (BottleneckBlock, [3, 4, 6, 3]),
    101: (BottleneckBlock, [3, 4, 23, 3]),
}


def _max_pool(kernel: int, padding: int) -> nn.Module:
    return nn.MaxPool2d(kernel_size=kernel, stride=2, padding=padding)


# Pooling after the stem. A registry-style table rather than an if-chain: the value
# builds the module (or None for no pooling); all pools have stride 2.
STEM_POOLS = {
    "none": None,
    "max2x2": lambda: _max_pool(2, 0),  # published Root-ResNet-34 for SSD300: 300 -> 150
    "max3x3": lambda: _max_pool(3, 1),  # stock ResNet stem pool
}

# The paper's downsampling study (ScratchDet Table 4), as stem keyword arguments.
DOWNSAMPLING_STUDY = {
    "resnet18": dict(stem_kernel=7, stem_stride=2, stem_convs=1, stem_pool="max3x3"),
    "no_maxpool": dict(stem_kernel=7, stem_stride=2, stem_convs=1, stem_pool="none"),
    "conv1_stride1": dict(stem_kernel=7, stem_stride=1, stem_convs=1, stem_pool="none"),
    "root_resnet18": dict(stem_kernel=3, stem_stride=1, stem_convs=3, stem_pool="none"),
}


def _has_norm(norm) -> bool:
    return norm not in (None, "", "none")


class RootStem(CNNBlockBase):
    """
    The "root": ``num_convs`` convs (kernel ``kernel_size``; the first one has stride
    ``stride``, the others stride 1), each followed by norm and ReLU, then an optional
    stride-2 max-pool.

    Input (N, in_channels, H, W); output (N, out_channels, H / s, W / s) with
    ``s = stride * (2 if pool else 1)`` (rounded down by the convolutions' arithmetic).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 64,
        *,
        num_convs: int = 3,
        kernel_size: int = 3,
        stride: int = 1,
        pool: str = "none",
        norm="BN",
    ):
        if num_convs < 1:
            raise ValueError(f"RootStem: num_convs must be >= 1, got {num_convs}")
        if pool not in STEM_POOLS:
            raise ValueError(f"RootStem: pool={pool!r} is not one of {sorted(STEM_POOLS)}")
        total_stride = stride * (1 if STEM_POOLS[pool] is None else 2)
        super().__init__(in_channels, out_channels, total_stride)
        bias = not _has_norm(norm)
        norm = norm if _has_norm(norm) else ""
        convs = []
        for i in range(num_convs):
            conv = Conv2d(
                in_channels if i == 0 else out_channels,
                out_channels,
                kernel_size=kernel_size,
                stride=stride if i == 0 else 1,
                padding=kernel_size // 2,
                bias=bias,
                norm=get_norm(norm, out_channels),
            )
            weight_init.c2_msra_fill(conv)
            convs.append(conv)
        self.convs = nn.ModuleList(convs)
        factory = STEM_POOLS[pool]
        self.pool = factory() if factory is not None else None

    def forward(self, x):
        for conv in self.convs:
            x = F.relu_(conv(x))
        if self.pool is not None:
            x = self.pool(x)
        return x


def init_from_scratch(module: nn.Module, zero_init_residual: bool = False) -> None:
    """
    Initialise a network for training from random weights: Kaiming-normal (fan_out,
    ReLU) for every conv, norm layers weight 1 and bias 0. With ``zero_init_residual``,
    the last norm of every residual block starts at weight 0 so each block starts as
    the identity (Goyal et al., 2017).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in module.modules():
            last = None
            if isinstance(m, BasicBlock):
                last = m.conv2.norm
            elif isinstance(m, BottleneckBlock):
                last = m.conv3.norm
            if last is not None and getattr(last, "weight", None) is not None:
                nn.init.zeros_(last.weight)


class RootResNet(ResNet):
    """
    A Detectron2 :class:`ResNet` behind a :class:`RootStem`.

    Outputs (for ``out_features`` among "stem", "res2".."res5") feature maps of shape
    (N, C_k, H / s_k, W / s_k) where, with the stem's total stride ``s0``,
    ``s_res2 = s0``, ``s_res3 = 2 s0``, ``s_res4 = 4 s0``, ``s_res5 = 8 s0``, and
    ``C_res2 = res2_out_channels * 2^(k-2)`` (BasicBlock; x4 for Bottleneck).
    """

    def __init__(
        self,
        depth: int = 34,
        *,
        in_channels: int = 3,
        stem_channels: int = 64,
        stem_convs: int = 3,
        stem_kernel: int = 3,
        stem_stride: int = 1,
        stem_pool: str = "max2x2",
        res2_out_channels: Optional[int] = None,
        norm="BN",
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        freeze_at: int = 0,
        zero_init_residual: bool = False,
    ):
        """
        Args:
            depth: 18, 34 (BasicBlock) or 50, 101 (Bottleneck).
            stem_channels, stem_convs, stem_kernel, stem_stride, stem_pool: the root, see
                :class:`RootStem` and ``DOWNSAMPLING_STUDY``.
            res2_out_channels: output width of res2 (default 64 for BasicBlock, 256 for
                Bottleneck); later stages double it. Narrow variants set it smaller.
            norm: "BN", "SyncBN", "GN", "FrozenBN" or "" / "none" (no normalisation).
            out_features: which of "stem", "res2".."res5" to return.
            freeze_at: number of leading stages (stem = 1) to freeze; 0 trains everything,
                which is what from-scratch training needs.
            zero_init_residual: start each residual block as the identity.
        """
        if depth not in _DEPTHS:
            raise ValueError(f"RootResNet: depth={depth} is not one of {sorted(_DEPTHS)}")
        block_class, num_blocks = _DEPTHS[depth]
        bottleneck = block_class is BottleneckBlock
        if res2_out_channels is None:
            res2_out_channels = 256 if bottleneck else 64
        stage_norm = norm if _has_norm(norm) else ""
        stem = RootStem(
            in_channels,
            stem_channels,
            num_convs=stem_convs,
            kernel_size=stem_kernel,
            stride=stem_stride,
            pool=stem_pool,
            norm=norm,
        )
        stages: List[List[CNNBlockBase]] = []
        in_ch, out_ch = stem_channels, res2_out_channels
        for idx, n in enumerate(num_blocks):
            kwargs = dict(
                block_class=block_class,
                num_blocks=n,
                stride_per_block=[1 if idx == 0 else 2] + [1] * (n - 1),
                in_channels=in_ch,
                out_channels=out_ch,
                norm=stage_norm,
            )
            if bottleneck:
                kwargs["bottleneck_channels"] = out_ch // 4
            stages.append(ResNet.make_stage(**kwargs))
            in_ch, out_ch = out_ch, out_ch * 2
        super().__init__(stem, stages, out_features=list(out_features), freeze_at=0)
        init_from_scratch(self, zero_init_residual=zero_init_residual)
        self.freeze(freeze_at)


@BACKBONE_REGISTRY.register()
def build_root_resnet_backbone(cfg, input_shape: ShapeSpec):
    """yacs entry point: ``MODEL.BACKBONE.NAME = "build_root_resnet_backbone"``."""
    r = cfg.MODEL.ROOT_RESNET
    return RootResNet(
        depth=r.DEPTH,
        in_channels=input_shape.channels,
        stem_channels=r.STEM_OUT_CHANNELS,
        stem_convs=r.STEM_NUM_CONVS,
        stem_kernel=r.STEM_KERNEL_SIZE,
        stem_stride=r.STEM_STRIDE,
        stem_pool=r.STEM_POOL,
        res2_out_channels=r.RES2_OUT_CHANNELS or None,
        norm=r.NORM,
        out_features=r.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        zero_init_residual=r.ZERO_INIT_RESIDUAL,
    )
