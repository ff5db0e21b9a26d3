"""What ``scripting_with_instances`` needs beyond a model's own code: scriptable stand-ins,
on a copy of the model, for two modules whose eager forward TorchScript cannot compile.

- Detectron2's ``CycleBatchNormList`` (the BN of ``RetinaNetHead`` with ``norm="BN"``:
  one BN per level, cycled at each call) indexes its ``ModuleList`` with a variable;
  :class:`ScriptableCycleBatchNormList` selects the same BN by enumeration.
- :class:`~scratchdet.backbone.SSDBackbone` runs its extra stages by name
  (``getattr(self, name)``), which keeps their checkpoint keys (``extra1``, ...);
  :class:`ScriptableSSDBackbone` runs the same modules through a ``ModuleList``.

The stand-ins share the copy's parameters and buffers and compute the same outputs.
"""
import copy

import torch
from torch import nn

from detectron2.layers import CycleBatchNormList

from ..backbone.ssd import SSDBackbone

__all__ = ["ScriptableCycleBatchNormList", "ScriptableSSDBackbone", "scriptable_copy"]


class ScriptableCycleBatchNormList(CycleBatchNormList):
    """``CycleBatchNormList`` whose forward picks the current BN by enumeration.
    x: (N, C, H, W) -> (N, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ret = x
        for i, bn in enumerate(self):
            if i == self._pos:
                ret = bn(x)
        self._pos = (self._pos + 1) % self._length
        if self._affine:
            ret = ret * self.weight.reshape(1, -1, 1, 1) + self.bias.reshape(1, -1, 1, 1)
        return ret


class ScriptableSSDBackbone(SSDBackbone):
    """``SSDBackbone`` with its extra stages also in ``extra_stages`` (a ModuleList of the
    same modules). x: (N, 3, H, W) -> dict of (N, C_k, H_k, W_k)."""

    def forward(self, x: torch.Tensor):
        feats = self.bottom_up(x)
        out = {f: feats[f] for f in self.in_features}
        y = out[self.in_features[-1]]
        for i, block in enumerate(self.extra_stages):
            y = block(y)
            out[self.extras[i]] = y
        return out


def scriptable_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with the stand-ins above in place (the model itself is
    left as it is)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if type(m) is CycleBatchNormList:
            m.__class__ = ScriptableCycleBatchNormList
            m._length = len(m)
        elif type(m) is SSDBackbone:
            m.__class__ = ScriptableSSDBackbone
            m.extra_stages = nn.ModuleList([getattr(m, name) for name in m.extras])
    return model
