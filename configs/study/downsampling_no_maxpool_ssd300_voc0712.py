"""Downsampling study, stem setting "no_maxpool" (see _ssd_sources.py and the paper's Table 4)."""
from ..VOC.scratchdet300_root_resnet34_voc0712 import (  # noqa: F401
    dataloader, lr_multiplier, model, optimizer, train)
from ._ssd_sources import apply_downsampling_study

apply_downsampling_study(model, train, "no_maxpool")
