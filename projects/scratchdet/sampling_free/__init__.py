"""Sampling-Free training (Chen et al. 2019, "Is Sampling Heuristics Necessary in
Training Deep Object Detectors?"): plain cross-entropy over all anchors/proposals,
optimal bias initialisation from the data's foreground prior, guided loss scaling and
adaptive score thresholds."""
from .cascade import SamplingFreeCascadeROIHeads
from .guided_loss import GuidedLossScaler, guided_scale
from .initialize import (
    PriorInitHook,
    estimate_priors,
    initialize_priors,
    initialize_priors_from_checkpoint,
    prior_heads,
)
from .prior import AnchorCounter, PriorCounts, count_dataset, resize_options
from .prior_state import THRESHOLD_RULES, PriorState, bias_from_prior
from .point_prior import FCOSPointRule, PointCounter
from .fcos import SamplingFreeFCOS
from .rcnn import SamplingFreeFastRCNNOutputLayers, SamplingFreeROIHeads, SamplingFreeRPN
from .retinanet import SamplingFreeRetinaNet, classification_bias_params
