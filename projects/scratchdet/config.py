"""yacs config keys for scratchdet's modules (``add_scratchdet_config``)."""
from detectron2.config import CfgNode as CN

__all__ = ["add_scratchdet_config"]


def add_scratchdet_config(cfg: CN) -> CN:
    """
    Add scratchdet's keys, with their defaults, to a Detectron2 config (in place). It
    changes none of the config's existing keys: training from scratch needs
    ``MODEL.BACKBONE.FREEZE_AT: 0``, which the YAML bases in configs/ set (Detectron2's
    default 2 freezes the stem and res2).

    MODEL.ROOT_RESNET: the Root-ResNet backbone (see ``scratchdet.backbone.RootResNet``).
    MODEL.SSD: SSD extra stages and anchor steps (``build_root_resnet_ssd_backbone``) and
    the SSD head of the ``ScratchDetSSD`` meta-architecture.
    MODEL.SAMPLING_FREE: the Sampling-Free heads (``scratchdet.sampling_free``).
    MODEL.FCOS: Detectron2's FCOS (``ConfigurableFCOS``, ``SamplingFreeFCOS``).
    DATASETS.COCO_INSTANCES: COCO-format datasets at any path, registered by
    ``scratchdet.data.register_datasets_from_yacs(cfg)``.
    """
    cfg.MODEL.ROOT_RESNET = CN()
    r = cfg.MODEL.ROOT_RESNET
    r.DEPTH = 34
    r.STEM_OUT_CHANNELS = 64  # width of each root conv
    r.STEM_NUM_CONVS = 3  # number of stacked root convs
    r.STEM_KERNEL_SIZE = 3
    r.STEM_STRIDE = 1  # stride of the first root conv
    r.STEM_POOL = "max2x2"  # "none", "max2x2" (ScratchDet300) or "max3x3" (stock ResNet)
    r.RES2_OUT_CHANNELS = 0  # 0: 64 for BasicBlock, 256 for Bottleneck
    r.NORM = "BN"  # "BN", "SyncBN", "GN", "" (none)
    r.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    r.ZERO_INIT_RESIDUAL = False

    cfg.MODEL.SSD = CN()
    cfg.MODEL.SSD.IN_FEATURES = ["res4", "res5"]
    cfg.MODEL.SSD.EXTRA_CHANNELS = [128, 128, 128, 128]
    cfg.MODEL.SSD.STEPS = [8, 16, 32, 64, 100, 300]
    # Norm of the SSD head's prediction convs (ScratchDetSSD): a detectron2.layers.get_norm
    # name ("BN", the default: each conv without bias, followed by a BatchNorm, as in
    # ScratchDet; "SyncBN", "GN", ...) or "" (plain convs with bias, as in the original
    # SSD); an unknown name raises.
    cfg.MODEL.SSD.HEAD_NORM = "BN"
    # ScratchDetSSD's loss: "multibox" (SSD's and ScratchDet's: softmax over K + 1 classes,
    # NEG_POS_RATIO hard negatives per positive, smooth-L1 with
    # MODEL.RETINANET.SMOOTH_L1_LOSS_BETA) or "focal" (Detectron2's RetinaNet loss).
    # Both match anchors with SSD's rule at MODEL.RETINANET.IOU_THRESHOLDS.
    cfg.MODEL.SSD.LOSS = "multibox"
    cfg.MODEL.SSD.NEG_POS_RATIO = 3.0

    # Sampling-Free heads (SamplingFreeRetinaNet, SamplingFreeRPN, SamplingFreeROIHeads,
    # SamplingFreeFCOS: GUIDED_LOSS_SCALE and THRESHOLD_RULE)
    cfg.MODEL.SAMPLING_FREE = CN()
    sf = cfg.MODEL.SAMPLING_FREE
    sf.GUIDED_LOSS_SCALE = 1.0  # RetinaNet / RPN: loss_cls scaled to 1.0 x box loss
    sf.ROI_GUIDED_LOSS_SCALE = 2.0  # R-CNN box head: 2.0 x box loss
    sf.THRESHOLD_RULE = "global"  # "global" (prior x C) or "per_class" (paper)
    sf.RETINANET_NMS_THRESH_TEST = 0.55
    sf.ROI_SCORE_THRESH_TEST = 1e-4

    # Detectron2's FCOS (scratchdet.modeling.ConfigurableFCOS, SamplingFreeFCOS), with the
    # defaults of Detectron2's common/models/fcos.py; TEST.DETECTIONS_PER_IMAGE caps it
    cfg.MODEL.FCOS = CN()
    f = cfg.MODEL.FCOS
    f.NUM_CLASSES = 80
    f.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    f.NUM_CONVS = 4  # head convs, as wide as the features
    f.NORM = "GN"
    f.PRIOR_PROB = 0.01  # Sampling-Free: replaced by the counted prior before training
    f.CENTER_SAMPLING_RADIUS = 1.5
    f.FOCAL_LOSS_ALPHA = 0.25
    f.FOCAL_LOSS_GAMMA = 2.0
    f.SCORE_THRESH_TEST = 0.2  # on sqrt(cls x centerness); Sampling-Free: until a prior is set
    f.TOPK_CANDIDATES_TEST = 1000
    f.NMS_THRESH_TEST = 0.6

    # COCO-format instance datasets at any path, as [name, json_file, image_root] triples
    # (default: empty list, nothing registered). ``register_datasets_from_yacs(cfg)``
    # registers them after expanding ``$VARS`` and ``~`` in the paths;
    # ``$SCRATCHDET_COCO_MINI`` defaults to ``scratchdet.data.coco_mini_root()``. E.g.
    #   COCO_INSTANCES: [["coco_mini_val",
    #                     "${SCRATCHDET_COCO_MINI}/annotations/instances_val2017.json",
    #                     "${SCRATCHDET_COCO_MINI}/val2017"]]
    cfg.DATASETS.COCO_INSTANCES = []
    return cfg
