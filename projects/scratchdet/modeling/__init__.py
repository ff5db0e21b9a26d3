"""Detector parts: SSD head and anchors."""
from .ssd import SSDAnchorGenerator, SSDHead, ssd_num_anchors
