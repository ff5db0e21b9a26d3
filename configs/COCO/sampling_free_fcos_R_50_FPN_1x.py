"""Sampling-Free FCOS R50-FPN 1x on COCO: Detectron2's own fcos_R_50_FPN_1x (ImageNet R-50
as Detectron2 names it, res2 and stem frozen, GN head, P6/P7 from P5, lr 0.01, 90k
iterations at batch 16) with the Sampling-Free loss (BCE over every location, guided
scaling to 1.0 x the GIoU loss), the prior counted with FCOS's own point assignment, and
the adaptive threshold on sqrt(cls x centerness) in place of Detectron2's 0.2."""
from detectron2.model_zoo import get_config

from ..common.data.loader import name_image_errors
from ..common.models.sampling_free import sampling_free_fcos

_base = get_config("COCO-Detection/fcos_R_50_FPN_1x.py")
dataloader, optimizer, lr_multiplier, train = (
    _base.dataloader, _base.optimizer, _base.lr_multiplier, _base.train)
dataloader = name_image_errors(dataloader)  # read errors name the image and dataset
model = sampling_free_fcos(_base.model)
train.output_dir = "./output/sampling_free_fcos_R_50_FPN_1x"
# AP at the adaptive threshold and at Detectron2's FCOS test_score_thresh, one pass
train.adaptive_threshold = dict(enabled=True, rule=None, fixed=0.2)
