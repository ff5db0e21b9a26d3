"""Root-ResNet backbones: bare, with FPN, and with SSD extra stages."""
from .fpn import build_root_resnet_fpn_backbone, build_root_resnet_retinanet_fpn_backbone
from .root_resnet import (
    DOWNSAMPLING_STUDY,
    STEM_POOLS,
    RootResNet,
    RootStem,
    build_root_resnet_backbone,
    init_from_scratch,
)
from .ssd import (
    SSDBackbone,
    SSDExtraBlock,
    apply_ssd_downsampling_study,
    build_root_resnet_ssd_backbone,
    ssd_extra_layout,
)
