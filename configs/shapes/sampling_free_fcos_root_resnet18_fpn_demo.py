"""The demo FCOS (narrow Root-ResNet-18-FPN, from scratch) trained the Sampling-Free way:
BCE over every location with guided scaling to the GIoU loss, classification bias from
the embedded data's foreground prior counted with FCOS's point assignment, adaptive score
threshold on sqrt(cls x centerness) at inference."""
from ..common.models.sampling_free import sampling_free_fcos
from .fcos_root_resnet18_fpn_demo import (  # noqa: F401
    dataloader, lr_multiplier, model, optimizer, train)

model = sampling_free_fcos(model)
train.output_dir = "./output/demo_sampling_free_fcos"
# AP at the adaptive threshold and at the stock FCOS's 0.2, one pass
train.adaptive_threshold = dict(enabled=True, rule=None, fixed=0.2)
