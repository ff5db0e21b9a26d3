"""The ScratchDet downsampling study (paper Table 4, SSD300 on VOC 2007, from scratch):
one ResNet-18 SSD300 per stem setting of ``scratchdet.backbone.DOWNSAMPLING_STUDY``.

The SSD maps start at the ResNet stage whose output is 38x38 for a 300x300 input (stride
8), so the six maps stay 38/19/10/5/3/1 whatever the stem (see
``scratchdet.backbone.apply_ssd_downsampling_study``).
"""
from scratchdet.backbone import apply_ssd_downsampling_study as _apply


def apply_downsampling_study(model, train, study):
    """Turn the ScratchDet300 VOC model config into the study's ResNet-18 setting."""
    _apply(model, study, first_stride=8)
    train.output_dir = "./output/study/downsampling_" + study
