"""Detector parts: ScratchDet300's SSD head, anchors, MultiBox loss and meta-architecture;
Detectron2's FCOS buildable from a yacs config."""
from .multibox import SSDMatcher, hard_negative_mask, multibox_loss
from .ssd import SSD_LOSSES, ScratchDetSSD, SSDAnchorGenerator, SSDHead, ssd_num_anchors
from .fcos import ConfigurableFCOS
