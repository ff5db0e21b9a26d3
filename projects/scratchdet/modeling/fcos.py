"""Detectron2's FCOS, buildable from a yacs config (Detectron2's has no ``from_config``)."""
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.fcos import FCOS, FCOSHead

__all__ = ["ConfigurableFCOS"]


@META_ARCH_REGISTRY.register()
class ConfigurableFCOS(FCOS):
    """
    Detectron2's :class:`FCOS` unchanged, with a ``from_config`` reading ``MODEL.FCOS``
    (added by :func:`scratchdet.add_scratchdet_config` with the defaults of Detectron2's
    ``common/models/fcos.py``), so that a yacs config (``META_ARCHITECTURE:
    "ConfigurableFCOS"``) and a LazyConfig build the same model. The head is
    Detectron2's :class:`FCOSHead` on ``MODEL.FCOS.IN_FEATURES`` with
    ``MODEL.FCOS.NUM_CONVS`` convs as wide as the backbone's features.
    """

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        f = cfg.MODEL.FCOS
        shapes = [backbone.output_shape()[k] for k in f.IN_FEATURES]
        head = FCOSHead(input_shape=shapes, conv_dims=[shapes[0].channels] * f.NUM_CONVS,
                        num_classes=f.NUM_CLASSES, norm=f.NORM, prior_prob=f.PRIOR_PROB)
        return dict(
            backbone=backbone,
            head=head,
            head_in_features=list(f.IN_FEATURES),
            num_classes=f.NUM_CLASSES,
            center_sampling_radius=f.CENTER_SAMPLING_RADIUS,
            focal_loss_alpha=f.FOCAL_LOSS_ALPHA,
            focal_loss_gamma=f.FOCAL_LOSS_GAMMA,
            test_score_thresh=f.SCORE_THRESH_TEST,
            test_topk_candidates=f.TOPK_CANDIDATES_TEST,
            test_nms_thresh=f.NMS_THRESH_TEST,
            max_detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
        )
