"""The yacs YAML configs describe the same detectors as the LazyConfigs beside them.

For every ``configs/**/foo.yaml`` with a ``foo.py`` LazyConfig:

- ``build_model(cfg)`` and ``instantiate(cfg.model)`` have the same state_dict (keys,
  shapes, initial buffers), the same frozen parameters and the same hyper-parameters
  (every plain attribute of every sub-module, plus an explicit list of the inference
  ones so a failure names what differs);
- the test resize, input format, datasets and solver/schedule keys agree;
- ``DefaultPredictor(yaml cfg)`` loading a checkpoint of the LazyConfig model gives the
  LazyConfig model's detections on the LazyConfig test mapper's input.

Plus ``register_datasets_from_yacs`` (``DATASETS.COCO_INSTANCES``).
"""
import copy
import functools
import glob
import math
import os
import re
import uuid

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, ListConfig
from PIL import Image
from torch import nn

import detectron2.data.transforms as T
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch import FCOS, GeneralizedRCNN, RetinaNet
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.solver import build_lr_scheduler

from scratchdet import add_scratchdet_config
from scratchdet.data import (
    SSDDatasetMapper,
    coco_mini_root,
    register_datasets_from_config,
    register_datasets_from_yacs,
)
from scratchdet.data.coco import _yacs_entries
from scratchdet.modeling import ScratchDetSSD, SSDHead, SSDMatcher
from scratchdet.sampling_free import PriorCounts, classification_bias_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def _rel(p):
    return os.path.relpath(p, CONFIGS)


LAZY = sorted(
    _rel(p) for p in glob.glob(os.path.join(CONFIGS, "**", "*.py"), recursive=True)
    if "/common/" not in p and not os.path.basename(p).startswith("_")
)
PAIRS = sorted(
    _rel(p)[: -len(".yaml")] for p in glob.glob(os.path.join(CONFIGS, "**", "*.yaml"),
                                                recursive=True)
    if os.path.isfile(p[: -len(".yaml")] + ".py")
)
SMALL = [p for p in PAIRS if p.startswith(("shapes/", "coco_mini/"))]
# paper-scale pairs whose detections are compared too; they test at 800 px, which is slow
# on a CPU, so both sides test at this short side instead (SSD: its own 300x300)
LARGE_FUNCTIONAL = {
    "COCO/sampling_free_retinanet_R_50_FPN_1x": 320,
    "COCO/sampling_free_faster_rcnn_R_50_FPN_1x": 320,
    "COCO/sampling_free_fcos_R_50_FPN_1x": 320,
    "COCO/sampling_free_cascade_rcnn_R_50_FPN_1x": 320,
    "COCO/sampling_free_mask_rcnn_R_50_FPN_1x": 320,
    "VOC/scratchdet_retinanet_root_resnet34_fpn_voc0712": 160,  # stride-1 root: costly
    "VOC/scratchdet300_root_resnet34_voc0712": None,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def load_yacs(stem, device="cpu"):
    cfg = add_scratchdet_config(get_cfg())
    cfg.merge_from_file(os.path.join(CONFIGS, stem + ".yaml"))
    if device is not None:
        cfg.MODEL.DEVICE = device
    return cfg


@functools.lru_cache(maxsize=None)
def _load_lazy(stem):
    return LazyConfig.load(os.path.join(CONFIGS, stem + ".py"))


def load_lazy(stem):
    return copy.deepcopy(_load_lazy(stem))


@functools.lru_cache(maxsize=None)
def _built(stem):
    torch.manual_seed(0)
    yacs_model = build_model(load_yacs(stem)).eval()
    torch.manual_seed(0)
    lazy_model = instantiate(load_lazy(stem).model).eval()
    return yacs_model, lazy_model


# -- comparison helpers -------------------------------------------------------------------
_MODULE_INTERNALS = set(vars(nn.Module()))


def _plain(v):
    """A comparable form of an attribute value, or None when it is not a plain value."""
    if isinstance(v, (ListConfig, DictConfig)):
        v = list(v) if isinstance(v, ListConfig) else dict(v)
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        items = [_plain(x) for x in v]
        return None if any(i is None and x is not None for i, x in zip(items, v)) else items
    if isinstance(v, dict):
        items = {k: _plain(x) for k, x in v.items()}
        return None if any(items[k] is None and x is not None for k, x in v.items()) else items
    return None


def _attributes(obj):
    """Plain attributes of a module or of a helper object (Matcher, Box2BoxTransform...)."""
    out = {}
    for k, v in vars(obj).items():
        if k in _MODULE_INTERNALS or k == "training":
            continue
        p = _plain(v)
        if k == "loss_weight" and isinstance(p, dict):
            # Detectron2 reads loss_weight.get(name, 1.0): {"loss_cls": 1.0, ...} from a
            # float default and {"loss_box_reg": 1.0} from yacs mean the same
            p = {name: w for name, w in p.items() if w != 1.0}
        if p is not None or v is None:
            out[k] = p
        elif not isinstance(v, (nn.Module, torch.Tensor, ListConfig, DictConfig)) \
                and hasattr(v, "__dict__") and not callable(v):
            # (a ListConfig of objects is the lazy side of a list, e.g. a cascade's
            # proposal_matchers, compared in key_hyper_parameters)
            out[k] = {"__class__": type(v).__name__, **_attributes(v)}
    return out


def all_hyper_parameters(model):
    return {name: {"__class__": type(m).__name__, **_attributes(m)}
            for name, m in model.named_modules()}


def _anchor_generator_params(ag):
    return dict(
        cls=type(ag).__name__,
        strides=list(ag.strides),
        offset=ag.offset,
        cell_anchors=[a.tolist() for a in ag.cell_anchors],
    )


def _matcher_params(m):
    return dict(thresholds=list(m.thresholds), labels=list(m.labels),
                low_quality=m.allow_low_quality_matches)


def _guided_scale(module):
    """The Sampling-Free guided loss scale of a head; None for a stock one."""
    return getattr(getattr(module, "guided_loss", None), "scale", None)


def key_hyper_parameters(model):
    """The inference (and matching) hyper-parameters, by name."""
    p = dict(
        pixel_mean=model.pixel_mean.flatten().tolist(),
        pixel_std=model.pixel_std.flatten().tolist(),
        input_format=getattr(model, "input_format", None),  # FCOS has none
        size_divisibility=model.backbone.size_divisibility,
        backbone_outputs={k: (v.channels, v.stride)
                          for k, v in model.backbone.output_shape().items()},
    )
    if isinstance(model, (RetinaNet, FCOS)):
        p.update(
            num_classes=model.num_classes,
            head_in_features=list(model.head_in_features),
            test_score_thresh=model.test_score_thresh,
            test_nms_thresh=model.test_nms_thresh,
            test_topk_candidates=model.test_topk_candidates,
            max_detections_per_image=model.max_detections_per_image,
            anchor_generator=_anchor_generator_params(model.anchor_generator),
        )
        if isinstance(model, FCOS):
            p.update(center_sampling_radius=model.center_sampling_radius,
                     box2box_normalize_by_size=model.box2box_transform.normalize_by_size)
        else:
            p.update(
                box2box_weights=list(model.box2box_transform.weights),
                anchor_matcher=_matcher_params(model.anchor_matcher),
                smooth_l1_beta=model.smooth_l1_beta,
                box_reg_loss_type=model.box_reg_loss_type,
            )
        if hasattr(model, "prior_state"):
            p.update(threshold_rule=model.prior_state.rule,
                     guided_loss_scale=model.guided_loss.scale)
        elif isinstance(model, ScratchDetSSD) and model.loss == "multibox":
            p.update(loss=model.loss, neg_pos_ratio=model.neg_pos_ratio,
                     head_scores=model.head.num_scores)
        else:
            p.update(focal=(model.focal_loss_alpha, model.focal_loss_gamma))
    else:
        assert isinstance(model, GeneralizedRCNN)
        rpn, roi = model.proposal_generator, model.roi_heads
        bp = roi.box_predictor
        if isinstance(bp, nn.ModuleList):  # Cascade R-CNN: the stages, the last one filters
            p.update(stage_matchers=[_matcher_params(m) for m in roi.proposal_matchers],
                     stage_box2box_weights=[list(b.box2box_transform.weights) for b in bp])
            bp = bp[-1]
        p.update(
            rpn_class=type(rpn).__name__,
            rpn_in_features=list(rpn.in_features),
            rpn_topk=(rpn.pre_nms_topk, rpn.post_nms_topk),
            rpn_nms_thresh=rpn.nms_thresh,
            rpn_anchor_generator=_anchor_generator_params(rpn.anchor_generator),
            rpn_matcher=_matcher_params(rpn.anchor_matcher),
            rpn_box2box_weights=list(rpn.box2box_transform.weights),
            rpn_guided_loss_scale=_guided_scale(rpn),  # None: stock R-CNN
            roi_class=type(roi).__name__,
            roi_num_classes=roi.num_classes,
            roi_in_features=list(roi.box_in_features),
            roi_matcher=_matcher_params(roi.proposal_matcher),
            roi_mask_on=roi.mask_on,
            box_predictor_class=type(bp).__name__,
            test_score_thresh=bp.test_score_thresh,
            test_nms_thresh=bp.test_nms_thresh,
            test_topk_per_image=bp.test_topk_per_image,
            box2box_weights=list(bp.box2box_transform.weights),
            roi_guided_loss_scale=_guided_scale(bp),
        )
    return p


def _resize(augs):
    """(min_size_test, max_size_test) a test augmentation list amounts to."""
    augs = list(augs)
    if not augs:
        return 0, None
    assert len(augs) == 1, augs
    a = augs[0]
    if isinstance(a, T.ResizeShortestEdge):
        # an int short_edge_length becomes the "range" (l, l): one size either way
        assert len(set(a.short_edge_length)) == 1, a
        return a.short_edge_length[0], a.max_size
    assert isinstance(a, T.Resize), a  # SSD: a fixed (h, w), aspect ratio not kept
    h, w = a.shape
    assert h == w, "yacs can only approximate a square SSD resize"
    return h, w


def _names(x):
    return [x] if isinstance(x, str) else list(x)


# -- the list of configs --------------------------------------------------------------------
def test_every_lazy_config_has_a_yaml():
    missing = [p for p in LAZY if p[: -len(".py")] not in PAIRS]
    assert not missing, f"LazyConfigs without a .yaml beside them: {missing}"
    assert {"coco_mini/scratchdet_root_resnet18_fpn_coco_mini",
            "coco_mini/sampling_free_root_resnet18_fpn_coco_mini",
            "shapes/scratchdet_root_resnet18_fpn_demo",
            "shapes/sampling_free_root_resnet18_fpn_demo",
            "coco_mini/sampling_free_fcos_root_resnet18_fpn_coco_mini",
            "shapes/fcos_root_resnet18_fpn_demo",
            "shapes/sampling_free_fcos_root_resnet18_fpn_demo",
            "shapes/faster_rcnn_root_resnet18_fpn_demo",
            "shapes/sampling_free_faster_rcnn_root_resnet18_fpn_demo",
            "shapes/cascade_rcnn_root_resnet18_fpn_demo",
            "shapes/sampling_free_cascade_rcnn_root_resnet18_fpn_demo",
            "coco_mini/sampling_free_cascade_rcnn_root_resnet18_fpn_coco_mini",
            "coco_mini/sampling_free_mask_rcnn_root_resnet18_fpn_coco_mini",
            "shapes/mask_rcnn_root_resnet18_fpn_demo",
            "shapes/sampling_free_mask_rcnn_root_resnet18_fpn_demo"} <= set(SMALL)


# -- model equivalence -----------------------------------------------------------------------
@pytest.mark.parametrize("stem", PAIRS)
def test_same_model(stem):
    yacs_model, lazy_model = _built(stem)
    assert type(yacs_model) is type(lazy_model)
    if type(yacs_model) is ScratchDetSSD:  # the loss, the head's scores and the matcher
        assert yacs_model.loss == lazy_model.loss == "multibox"
        assert isinstance(lazy_model.head, SSDHead) and lazy_model.head.loss == "multibox"
        assert type(yacs_model.anchor_matcher) is type(lazy_model.anchor_matcher) is SSDMatcher
    ys, ls = yacs_model.state_dict(), lazy_model.state_dict()
    assert list(ys) == list(ls)
    assert {k: tuple(v.shape) for k, v in ys.items()} == \
        {k: tuple(v.shape) for k, v in ls.items()}
    # buffers (BN statistics, prior state, pixel mean/std, anchors) start equal
    for (name, yb), (name2, lb) in zip(yacs_model.named_buffers(), lazy_model.named_buffers()):
        assert name == name2
        torch.testing.assert_close(yb, lb, rtol=0, atol=0, equal_nan=True, msg=name)
    frozen = lambda m: sorted(n for n, p in m.named_parameters() if not p.requires_grad)  # noqa
    assert frozen(yacs_model) == frozen(lazy_model)
    for (name, ym), (_, lm) in zip(yacs_model.named_modules(), lazy_model.named_modules()):
        assert type(ym).__name__ == type(lm).__name__ or name == "", name
    assert key_hyper_parameters(yacs_model) == key_hyper_parameters(lazy_model)
    yh, lh = all_hyper_parameters(yacs_model), all_hyper_parameters(lazy_model)
    yh[""].pop("__class__"), lh[""].pop("__class__")
    assert yh.keys() == lh.keys()
    for name in yh:
        assert yh[name] == lh[name], f"module {name!r}"


@pytest.mark.parametrize("stem", PAIRS)
def test_same_data_and_solver(stem):
    cfg, lc = load_yacs(stem, device=None), load_lazy(stem)
    d = lc.dataloader
    # test-time input: what DefaultPredictor does
    assert cfg.INPUT.FORMAT == d.test.mapper.image_format == d.train.mapper.image_format
    min_size, max_size = _resize(instantiate(d.test.mapper.augmentations))
    assert cfg.INPUT.MIN_SIZE_TEST == min_size
    if min_size:
        assert cfg.INPUT.MAX_SIZE_TEST == max_size
    assert list(cfg.DATASETS.TEST) == _names(d.test.dataset.names)
    assert list(cfg.DATASETS.TRAIN) == _names(d.train.dataset.names)
    assert cfg.SOLVER.IMS_PER_BATCH == d.train.total_batch_size
    assert cfg.DATALOADER.NUM_WORKERS == d.train.num_workers
    if d.train.mapper._target_ is not SSDDatasetMapper:  # SSD: see Base-ScratchDet300.yaml
        augs = instantiate(d.train.mapper.augmentations)
        resize = [a for a in augs if isinstance(a, T.ResizeShortestEdge)]
        flips = [a for a in augs if isinstance(a, T.RandomFlip)]
        assert len(resize) + len(flips) == len(augs), augs
        if resize:
            (r,) = resize
            assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(r.short_edge_length)
            assert cfg.INPUT.MAX_SIZE_TRAIN == r.max_size
            assert cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == r.sample_style
        else:
            assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (0,)  # no resize
        assert cfg.INPUT.RANDOM_FLIP == ("horizontal" if flips else "none")
        if flips:
            assert flips[0].horizontal and not flips[0].vertical
    # COCO-format datasets at a path
    datasets = lc.get("datasets", None) or {}
    assert {n: (j, i) for n, j, i in _yacs_entries(cfg)} == \
        {n: (os.path.normpath(e["json_file"]), os.path.normpath(e["image_root"]))
         for n, e in datasets.items()}
    # optimizer, schedule, training loop
    o = lc.optimizer
    assert cfg.SOLVER.BASE_LR == o.lr and cfg.SOLVER.MOMENTUM == o.momentum
    assert cfg.SOLVER.WEIGHT_DECAY == o.weight_decay
    assert cfg.SOLVER.WEIGHT_DECAY_NORM == o.params.weight_decay_norm
    assert cfg.SOLVER.NESTEROV == o.get("nesterov", False)
    t = lc.train
    assert cfg.SOLVER.MAX_ITER == t.max_iter
    assert cfg.TEST.EVAL_PERIOD == t.eval_period
    assert cfg.SOLVER.CHECKPOINT_PERIOD == t.checkpointer.period
    assert cfg.OUTPUT_DIR == t.output_dir
    assert cfg.MODEL.WEIGHTS == t.init_checkpoint
    assert cfg.MODEL.DEVICE == t.device
    assert cfg.SOLVER.AMP.ENABLED == t.amp.enabled
    lazy_sched = instantiate(lc.lr_multiplier)
    yacs_sched = build_lr_scheduler(
        cfg, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR))._multiplier
    n = cfg.SOLVER.MAX_ITER
    for it in sorted(set(np.linspace(0, n - 1, 101).astype(int).tolist()
                         + list(range(0, min(n, 3000), 7)))):
        assert yacs_sched(it / n) == pytest.approx(lazy_sched(it / n), rel=1e-9, abs=1e-12), it


# -- DefaultPredictor gives the LazyConfig model's detections ------------------------------
def _randomize_(model):
    """Move the weights off their initialisation so that many boxes pass the thresholds."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.mul_(1 + 0.5 * torch.randn(p.shape, generator=g))
            p.add_(0.01 * torch.randn(p.shape, generator=g))
        head = getattr(model, "head", None)
        if head is not None:
            # dense detectors: scores spread around the score threshold, so that it decides
            # which candidates are kept
            if hasattr(model, "score_thresholds"):
                thresh = float(model.score_thresholds().mean())
            else:
                thresh = model.test_score_thresh
            for b in classification_bias_params(head):
                b.fill_(math.log(thresh / (1 - thresh)))


def _calibrate_norms(model, inputs):
    """Norm-layer statistics (BN and FrozenBN) of the randomised model on ``inputs``, as
    after training: without them, eval-mode activations of a deep random network explode
    and no box survives."""
    def set_statistics(norm, args):
        x = args[0]
        norm.running_mean.copy_(x.mean((0, 2, 3)))
        norm.running_var.copy_(x.var((0, 2, 3), unbiased=False))

    norms = [m for m in model.modules()
             if isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d))]
    handles = [m.register_forward_pre_hook(set_statistics) for m in norms]
    try:
        with torch.no_grad():
            model.eval()
            images = model.preprocess_image([inputs])
            features = model.backbone(images.tensor)
            if isinstance(model, DenseDetector):
                model.head([features[f] for f in model.head_in_features])
    finally:
        for h in handles:
            h.remove()


def _set_prior(model):
    """A Sampling-Free model as it is after training: prior (and thresholds) set."""
    if not hasattr(model, "set_prior"):
        if hasattr(getattr(model, "proposal_generator", None), "set_prior"):
            model.proposal_generator.set_prior(PriorCounts(
                num_classes=1, num_foreground=30, num_valid=10000, per_class=[30],
                num_images=10, stderr=1e-4))
        return
    c = model.num_classes
    per_class = [(7 * j) % 13 + 1 for j in range(c)]
    model.set_prior(PriorCounts(num_classes=c, num_foreground=sum(per_class),
                                num_valid=4 * c * sum(per_class), per_class=per_class,
                                num_images=10, stderr=1e-5))


def _image(stem, coco_mini_dir):
    if stem.startswith("shapes/"):  # embedded data: 160 x 160, never resized
        rng = np.random.RandomState(0)
        img = (rng.rand(160, 160, 3) * 60 + 90).astype(np.uint8)
        img[30:90, 20:70] = (200, 40, 40)
        img[100:150, 90:150] = (30, 180, 60)
        return img
    files = sorted(glob.glob(os.path.join(coco_mini_dir, "val2017", "*.jpg")))
    rgb = np.asarray(Image.open(files[0]).convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])  # BGR, as DefaultPredictor takes it


def _shrink_test_size(cfg, lc, size):
    """Test both sides at short side ``size`` (max ``2 * size``) instead of 800 px."""
    if size is None:
        return
    augs = lc.dataloader.test.mapper.augmentations
    if isinstance(augs, (list, ListConfig)) and len(augs) == 1 and \
            augs[0]._target_ is T.ResizeShortestEdge:
        augs[0].short_edge_length = size
        augs[0].max_size = size * 2
        cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = size, size * 2
    else:
        raise AssertionError(f"expected one ResizeShortestEdge, got {augs}")


@pytest.mark.parametrize("stem", SMALL + sorted(LARGE_FUNCTIONAL))
def test_default_predictor_reproduces_lazy_detections(stem, tmp_path, coco_mini):
    cfg, lc = load_yacs(stem), load_lazy(stem)
    if stem in LARGE_FUNCTIONAL:
        _shrink_test_size(cfg, lc, LARGE_FUNCTIONAL[stem])
    img = _image(stem, coco_mini)
    if stem.startswith("VOC/scratchdet300"):  # square input: ResizeShortestEdge == Resize
        img = np.ascontiguousarray(img[:240, :240])
    path = str(tmp_path / "image.png")
    Image.fromarray(img[:, :, ::-1]).save(path)  # lossless: the mapper reads back `img`
    h, w = img.shape[:2]
    inputs = instantiate(lc.dataloader.test.mapper)(
        {"file_name": path, "height": h, "width": w, "image_id": 0})

    lazy_model = copy.deepcopy(_built(stem)[1])
    _set_prior(lazy_model)
    _randomize_(lazy_model)
    _calibrate_norms(lazy_model, inputs)
    # a checkpoint as the LazyConfig trainer writes it, loaded by DefaultPredictor
    DetectionCheckpointer(lazy_model, save_dir=str(tmp_path)).save("model_final")
    cfg.MODEL.WEIGHTS = str(tmp_path / "model_final.pth")
    predictor = DefaultPredictor(cfg)
    loaded = predictor.model.state_dict()
    for k, v in lazy_model.state_dict().items():
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=0, equal_nan=True, msg=k)
    if hasattr(lazy_model, "prior_state"):
        assert predictor.model.prior_state.is_set
        assert torch.equal(predictor.model.score_thresholds(), lazy_model.score_thresholds())

    with torch.no_grad():
        expected = lazy_model([inputs])[0]["instances"]
    got = predictor(img)["instances"]
    assert len(expected) >= 5, "the comparison needs detections"
    print(f"{stem}: {len(expected)} detections, input {tuple(inputs['image'].shape)}")
    assert got.image_size == expected.image_size == (h, w)
    assert len(got) == len(expected)
    assert torch.equal(got.pred_classes, expected.pred_classes)
    torch.testing.assert_close(got.scores, expected.scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor,
                               rtol=1e-5, atol=1e-3)
    assert got.has("pred_masks") == expected.has("pred_masks")
    if expected.has("pred_masks"):  # Mask R-CNN: (N, H, W) bool masks pasted into the image
        assert got.pred_masks.shape == expected.pred_masks.shape == (len(got), h, w)
        assert expected.pred_masks.any(dim=(1, 2)).sum() >= 5
        assert torch.equal(got.pred_masks, expected.pred_masks)


# -- ScratchDetSSD ---------------------------------------------------------------------------
def test_scratchdet_ssd_names_missing_features():
    cfg = load_yacs("VOC/scratchdet300_root_resnet34_voc0712")
    cfg.MODEL.ROOT_RESNET.DEPTH = 18
    cfg.MODEL.RETINANET.IN_FEATURES = ["res3", "res5", "extra1", "extra2", "extra3", "extra4"]
    with pytest.raises(ValueError, match=r"MODEL.RETINANET.IN_FEATURES.*res3"):
        build_model(cfg)


# -- DATASETS.COCO_INSTANCES -----------------------------------------------------------------
def _cfg_with(entries):
    cfg = add_scratchdet_config(get_cfg())
    cfg.DATASETS.COCO_INSTANCES = entries
    return cfg


def test_coco_instances_default_is_empty():
    cfg = add_scratchdet_config(get_cfg())
    assert cfg.DATASETS.COCO_INSTANCES == []
    assert register_datasets_from_yacs(cfg) == []


def test_register_coco_mini_from_yaml(coco_mini, monkeypatch):
    monkeypatch.delenv("SCRATCHDET_COCO_MINI", raising=False)
    if coco_mini_root() != coco_mini:  # the data live elsewhere: named by the variable
        monkeypatch.setenv("SCRATCHDET_COCO_MINI", coco_mini)
    cfg = load_yacs("coco_mini/scratchdet_root_resnet18_fpn_coco_mini")
    assert register_datasets_from_yacs(cfg) == ["coco_mini_train", "coco_mini_val"]
    meta = MetadataCatalog.get("coco_mini_val")
    assert meta.json_file == os.path.join(coco_mini, "annotations", "instances_val2017.json")
    assert meta.image_root == os.path.join(coco_mini, "val2017")
    assert len(DatasetCatalog.get("coco_mini_val")) == 79
    assert len(MetadataCatalog.get("coco_mini_val").thing_classes) == 80
    # the same paths given through the variable (trailing slash and all), and through
    # the LazyConfig's `datasets`: registering again is a no-op, not a clash
    monkeypatch.setenv("SCRATCHDET_COCO_MINI", coco_mini + "/")
    assert register_datasets_from_yacs(cfg) == ["coco_mini_train", "coco_mini_val"]
    register_datasets_from_config(
        load_lazy("coco_mini/scratchdet_root_resnet18_fpn_coco_mini").datasets)


def test_register_expands_home_and_variables(tmp_path, monkeypatch):
    (tmp_path / "images").mkdir()
    (tmp_path / "ann.json").write_text(
        '{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}')
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SCRATCHDET_TEST_IMAGES", str(tmp_path / "images"))
    name = "yacs_test_" + uuid.uuid4().hex
    cfg = _cfg_with([[name, "~/ann.json", "$SCRATCHDET_TEST_IMAGES"]])
    assert register_datasets_from_yacs(cfg) == [name]
    assert MetadataCatalog.get(name).json_file == str(tmp_path / "ann.json")
    assert MetadataCatalog.get(name).image_root == str(tmp_path / "images")


def test_register_missing_file_names_the_path(tmp_path):
    good, bad = "yacs_test_" + uuid.uuid4().hex, "yacs_test_" + uuid.uuid4().hex
    (tmp_path / "images").mkdir()
    (tmp_path / "ann.json").write_text("{}")
    missing = str(tmp_path / "annotations" / "nope.json")
    cfg = _cfg_with([[good, str(tmp_path / "ann.json"), str(tmp_path / "images")],
                     [bad, missing, str(tmp_path / "images")]])
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        register_datasets_from_yacs(cfg)
    assert good not in DatasetCatalog.list() and bad not in DatasetCatalog.list()
    cfg = _cfg_with([[bad, str(tmp_path / "ann.json"), str(tmp_path / "no_images")]])
    with pytest.raises(FileNotFoundError, match="no_images"):
        register_datasets_from_yacs(cfg)


@pytest.mark.parametrize("entry", [["only_two", "a.json"], "just_a_name",
                                   ["a", "b.json", "c", "d"], ["a", "", "c"], ["a", 1, "c"]])
def test_register_bad_entry(entry):
    with pytest.raises(ValueError, match=r"DATASETS\.COCO_INSTANCES") as e:
        register_datasets_from_yacs(_cfg_with([entry]))
    assert repr(entry) in str(e.value)


def test_register_unset_variable_is_named(monkeypatch):
    monkeypatch.delenv("SCRATCHDET_UNSET_FOR_TEST", raising=False)
    cfg = _cfg_with([["x", "${SCRATCHDET_UNSET_FOR_TEST}/a.json", "/tmp"]])
    with pytest.raises(ValueError, match="SCRATCHDET_UNSET_FOR_TEST"):
        register_datasets_from_yacs(cfg)
