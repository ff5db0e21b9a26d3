"""Detector parts: SSD head and anchors, and the yacs SSD meta-architecture."""
from .ssd import ScratchDetSSD, SSDAnchorGenerator, SSDHead, ssd_num_anchors
