"""The ScratchDet downsampling study (paper Table 4, SSD300 on VOC 2007, from scratch):
one ResNet-18 SSD300 per stem setting of ``scratchdet.backbone.DOWNSAMPLING_STUDY``.

The SSD maps start at the ResNet stage whose output is 38x38 for a 300x300 input (stride
8), so the six maps stay 38/19/10/5/3/1 whatever the stem: the stem's total stride 4, 2
or 1 makes that stage res3, res4 or res5, and extra stages fill up to six maps.
"""
from detectron2.layers import ShapeSpec

from scratchdet.backbone import DOWNSAMPLING_STUDY

_FIRST = {4: "res3", 2: "res4", 1: "res5"}
_STAGES = ["res2", "res3", "res4", "res5"]
_WIDTH = {"res2": 64, "res3": 128, "res4": 256, "res5": 512}  # ResNet-18


def ssd_sources(study):
    """(ResNet stages fed to SSD, extra-stage widths, head input shapes) for a setting."""
    s = DOWNSAMPLING_STUDY[study]
    stride = s["stem_stride"] * (1 if s["stem_pool"] == "none" else 2)
    stages = _STAGES[_STAGES.index(_FIRST[stride]):]
    extras = [128] * (6 - len(stages))
    channels = [ShapeSpec(channels=_WIDTH[f]) for f in stages] + \
        [ShapeSpec(channels=128)] * len(extras)
    return stages, extras, channels


def apply_downsampling_study(model, train, study):
    """Turn the ScratchDet300 VOC model config into the study's ResNet-18 setting."""
    bottom_up = model.backbone.bottom_up
    for k, v in DOWNSAMPLING_STUDY[study].items():
        bottom_up[k] = v
    bottom_up.depth = 18
    stages, extras, channels = ssd_sources(study)
    bottom_up.out_features = stages
    model.backbone.in_features = stages
    model.backbone.extra_channels = extras
    model.head.input_shape = channels
    model.head_in_features = stages + ["extra{}".format(i + 1) for i in range(len(extras))]
    train.output_dir = "./output/study/downsampling_" + study
