"""Fold BatchNorm into the convolution before it, for inference and export.

In eval mode a BatchNorm is a per-channel affine map of its input, ``y = gamma * (x - mean)
/ sqrt(var + eps) + beta``; after a convolution it folds into the convolution's weight and
bias (``torch.nn.utils.fusion.fuse_conv_bn_weights``), which saves one pass over every
feature map. scratchdet's detectors apply BatchNorm in three ways, all folded here:

- Detectron2's :class:`~detectron2.layers.Conv2d` with a ``norm`` module (Root-ResNet's
  stem, blocks and shortcuts, the FPN with ``norm="BN"``, the SSD extra stages): the norm
  is folded into the conv and ``conv.norm`` becomes None.
- An ``nn.Sequential`` holding a conv and, right after it, a BatchNorm (ScratchDet's
  ``SSDHead``, Detectron2's ``RetinaNetHead`` with a shared norm such as ``"FrozenBN"``):
  the BatchNorm is folded into the conv and replaced by ``nn.Identity`` (the Sequential
  keeps its indices and names).
- Detectron2's :class:`~detectron2.layers.CycleBatchNormList` after a conv (the
  ``RetinaNetHead`` / ``FCOSHead`` with ``norm="BN"``): one conv is shared by all levels
  but each level has its own statistics, so one conv cannot absorb them. With
  ``split_levels`` (default) the Sequential holding them (the head's ``cls_subnet`` and
  ``bbox_subnet``) becomes a :class:`CycleSequential` of per-level copies, each conv
  folded with that level's statistics; the copies share everything else, and the head
  calls it once per level in order, exactly as it cycled the BatchNorms. This costs one
  copy of those conv weights per level (demo head: 4 x 64 x 64 x 3 x 3 -> 5 times that),
  no extra computation. Without ``split_levels`` the ``CycleBatchNormList`` stay.

Handled BatchNorms: ``nn.BatchNorm2d`` (and Detectron2's ``NaiveSyncBatchNorm``, a
subclass), ``nn.SyncBatchNorm`` and ``FrozenBatchNorm2d``, with running statistics (a
BatchNorm without them normalises by batch statistics even in eval mode and stays). A
BatchNorm that does not directly follow a convolution stays too; :func:`batchnorm_modules`
lists what is left. The folded model computes the same function in eval mode up to float
rounding (the folded weights are computed in float64); it is for inference and export
only: its parameters and state dict differ (no BatchNorm, conv biases added) and training
it would no longer normalise.
"""
import copy
from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from detectron2.layers import CycleBatchNormList, FrozenBatchNorm2d

__all__ = ["BATCHNORM_TYPES", "CycleSequential", "batchnorm_modules", "fold_batchnorm",
           "perturb_batchnorm"]

# what fold_batchnorm folds (NaiveSyncBatchNorm subclasses BatchNorm2d)
BATCHNORM_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)


class CycleSequential(nn.ModuleList):
    """
    Per-level copies of a Sequential, cycled like the :class:`CycleBatchNormList` they
    replace: the k-th call runs copy ``k % len(self)``. The caller must call it a multiple
    of ``len(self)`` times per forward (``RetinaNetHead`` and ``FCOSHead`` call their
    subnets once per level, in level order). The loop over the copies (instead of
    indexing by ``_pos``) keeps it scriptable. x: (N, C, H, W) -> (N, C', H', W').
    """

    def __init__(self, levels: List[nn.Module]):
        super().__init__(levels)
        self._pos = 0
        self._length = len(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ret = x
        for i, level in enumerate(self):
            if i == self._pos:
                ret = level(x)
        self._pos = (self._pos + 1) % self._length
        return ret


def _foldable_norm(m: Optional[nn.Module]) -> bool:
    return (isinstance(m, BATCHNORM_TYPES) and m.running_mean is not None
            and m.running_var is not None)


def _plain_conv(m: nn.Module) -> bool:
    """A conv whose output is its last step (a Detectron2 Conv2d without norm and
    activation): a BatchNorm after it in a Sequential acts on the conv's output."""
    return (isinstance(m, nn.Conv2d) and getattr(m, "norm", None) is None
            and getattr(m, "activation", None) is None)


def _norm_affine(norm: nn.Module, level: Optional[int] = None):
    """(mean, var, eps, weight, bias) of the affine map a BatchNorm applies in eval mode
    (weight and bias may be None: 1 and 0); with ``level``, of the ``level``-th BatchNorm
    of a CycleBatchNormList followed by the list's shared affine."""
    if level is None:
        return norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    bn = norm[level]
    weight, bias = bn.weight, bn.bias  # None: CycleBatchNormList's own are affine=False
    w, b = getattr(norm, "weight", None), getattr(norm, "bias", None)  # its shared affine
    if w is not None:  # y = w * (weight * x_hat + bias) + b
        weight = w if weight is None else w * weight
        bias = b if bias is None else w * bias + b
    return bn.running_mean, bn.running_var, bn.eps, weight, bias


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, affine: Tuple) -> None:
    """Set ``conv``'s weight (C_out, C_in / groups, kh, kw) and bias (C_out,) to those of
    the BatchNorm ``affine`` (:func:`_norm_affine`) applied after it, computed in float64
    and stored in the conv's dtype."""
    mean, var, eps, weight, bias = affine

    def f64(t):
        return None if t is None else t.detach().double()

    w, b = fuse_conv_bn_weights(f64(conv.weight), f64(conv.bias), f64(mean), f64(var), eps,
                                f64(weight), f64(bias))
    like = conv.weight
    conv.weight = nn.Parameter(w.to(like), requires_grad=like.requires_grad)
    conv.bias = nn.Parameter(b.to(like), requires_grad=like.requires_grad)


def _cycle_pairs(seq: nn.Sequential) -> List[int]:
    """Indices i of ``seq`` with a plain conv at i and a CycleBatchNormList at i + 1."""
    mods = list(seq)
    return [i for i in range(len(mods) - 1)
            if _plain_conv(mods[i]) and isinstance(mods[i + 1], CycleBatchNormList)
            and all(_foldable_norm(bn) for bn in mods[i + 1])]


def _split_levels(seq: nn.Sequential, pairs: List[int]) -> CycleSequential:
    """Per-level copies of ``seq``: each conv at ``pairs`` copied and folded with that
    level's statistics, its CycleBatchNormList replaced by Identity, every other module
    shared (called once per level, as before)."""
    mods = list(seq)
    cycles = [mods[i + 1] for i in pairs]
    length, pos = len(cycles[0]), cycles[0]._pos
    if any(len(c) != length or c._pos != pos for c in cycles):
        raise ValueError("CycleBatchNormLists of different lengths or positions in one "
                         "Sequential: the subnet is not called once per level")
    levels = []
    for level in range(length):
        level_mods = list(mods)
        for i in pairs:
            conv = copy.deepcopy(mods[i])
            _fold_into(conv, _norm_affine(mods[i + 1], level))
            level_mods[i], level_mods[i + 1] = conv, nn.Identity()
        levels.append(nn.Sequential(*level_mods))
    out = CycleSequential(levels)
    out._pos = pos  # the next call is the one the BatchNorms expected next (0 between calls)
    return out


def fold_batchnorm(model: nn.Module, split_levels: bool = True) -> nn.Module:
    """
    Fold every BatchNorm that directly follows a convolution into it (see the module
    docstring), in place. Puts ``model`` in eval mode first (the folded statistics are the
    running ones) and returns it; fold a ``copy.deepcopy`` to keep the original.

    Args:
        model: any module (a detector, a backbone, a head).
        split_levels: fold a ``CycleBatchNormList`` (one BatchNorm per level after a conv
            shared by the levels) by giving each level its own folded copy of the conv
            (:class:`CycleSequential`); False leaves them unfolded.

    Returns:
        ``model``, in eval mode. :func:`batchnorm_modules` lists the BatchNorms left.
    """
    model.eval()
    for conv in list(model.modules()):  # Detectron2's Conv2d: conv, norm, activation
        if isinstance(conv, nn.Conv2d) and _foldable_norm(getattr(conv, "norm", None)):
            _fold_into(conv, _norm_affine(conv.norm))
            conv.norm = None
    for seq in list(model.modules()):
        if isinstance(seq, nn.Sequential):
            for i in range(len(seq) - 1):
                if _plain_conv(seq[i]) and _foldable_norm(seq[i + 1]):
                    _fold_into(seq[i], _norm_affine(seq[i + 1]))
                    seq[i + 1] = nn.Identity()
    # after the plain BatchNorms: the per-level copies share the modules they do not fold
    if split_levels:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                pairs = _cycle_pairs(child) if isinstance(child, nn.Sequential) else []
                if pairs:
                    setattr(parent, name, _split_levels(child, pairs).eval())
    return model


def batchnorm_modules(model: nn.Module) -> List[Tuple[str, str]]:
    """(name, type) of every BatchNorm and CycleBatchNormList in ``model`` (the BatchNorms
    inside a CycleBatchNormList are not listed separately)."""
    out, inside = [], set()
    for name, m in model.named_modules():
        if isinstance(m, CycleBatchNormList):
            out.append((name, type(m).__name__))
            inside.update(id(bn) for bn in m)
        elif isinstance(m, BATCHNORM_TYPES + (nn.BatchNorm1d, nn.BatchNorm3d)) \
                and id(m) not in inside:
            out.append((name, type(m).__name__))
    return out


@torch.no_grad()
def perturb_batchnorm(model: nn.Module, seed: int = 0) -> int:
    """
    Give every BatchNorm of ``model`` (those inside a CycleBatchNormList and its shared
    affine included) random running statistics and affine parameters: mean ~ N(0, 0.1^2),
    var ~ U(0.5, 2), weight ~ U(0.5, 1.5), bias ~ N(0, 0.1^2), drawn from a generator
    seeded with ``seed``. A freshly built BatchNorm is the identity in eval mode (mean 0,
    var 1, weight 1, bias 0), so folding it proves nothing; tests and benchmarks call this
    on randomly initialised models first. Returns the number of modules changed.
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_((torch.rand(t.shape, generator=g) * (high - low) + low).to(t))

    def normal(t: torch.Tensor, std: float) -> None:
        t.copy_((torch.randn(t.shape, generator=g) * std).to(t))

    n = 0
    for m in model.modules():
        if isinstance(m, BATCHNORM_TYPES) and m.running_mean is not None:
            normal(m.running_mean, 0.1)
            uniform(m.running_var, 0.5, 2.0)
        if isinstance(m, BATCHNORM_TYPES + (CycleBatchNormList,)):
            if getattr(m, "weight", None) is not None:
                uniform(m.weight, 0.5, 1.5)
                normal(m.bias, 0.1)
            n += 1
    return n
