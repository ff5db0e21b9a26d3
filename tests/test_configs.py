"""Every config in configs/ instantiates and runs one training iteration on CPU.

Overrides only touch data (dataset, batch size, input size for non-SSD inputs) and the
device; the model and solver run as written.
"""
import glob
import os

import pytest
import torch

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetMapper
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import EventStorage

from scratchdet.data import SSDDatasetMapper
from scratchdet.engine import load_config
from scratchdet.sampling_free import initialize_priors, prior_heads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)
    if "/common/" not in p and not os.path.basename(p).startswith("_")
)


def test_config_list_covers_the_issue():
    names = " ".join(CONFIGS)
    for needle in ["demo", "scratchdet300_root_resnet34_voc0712", "scratchdet300_root_resnet34_coco",
                   "retinanet_root_resnet34_fpn_coco", "retinanet_root_resnet34_fpn_voc0712",
                   "downsampling_resnet18", "downsampling_no_maxpool",
                   "downsampling_conv1_stride1", "downsampling_root_resnet18", "coco_mini",
                   "COCO/sampling_free_retinanet_R_50_FPN_1x", "COCO/sampling_free_faster_rcnn_R_50_FPN_1x",
                   "VOC/sampling_free_retinanet_R_50_FPN", "VOC/sampling_free_faster_rcnn_R_50_FPN",
                   "sampling_free_scratchdet_retinanet_root_resnet34_fpn_coco",
                   "sampling_free_scratchdet_retinanet_root_resnet34_fpn_voc0712",
                   "shapes/sampling_free_root_resnet18_fpn_demo",
                   "COCO/sampling_free_fcos_R_50_FPN_1x", "shapes/fcos_root_resnet18_fpn_demo",
                   "shapes/sampling_free_fcos_root_resnet18_fpn_demo",
                   "coco_mini/sampling_free_fcos_root_resnet18_fpn_coco_mini",
                   "COCO/sampling_free_cascade_rcnn_R_50_FPN_1x",
                   "coco_mini/sampling_free_cascade_rcnn_root_resnet18_fpn_coco_mini",
                   "shapes/faster_rcnn_root_resnet18_fpn_demo",
                   "shapes/sampling_free_faster_rcnn_root_resnet18_fpn_demo",
                   "shapes/cascade_rcnn_root_resnet18_fpn_demo",
                   "shapes/sampling_free_cascade_rcnn_root_resnet18_fpn_demo",
                   "COCO/sampling_free_mask_rcnn_R_50_FPN_1x",
                   "coco_mini/sampling_free_mask_rcnn_root_resnet18_fpn_coco_mini",
                   "shapes/mask_rcnn_root_resnet18_fpn_demo",
                   "shapes/sampling_free_mask_rcnn_root_resnet18_fpn_demo"]:
        assert needle in names, needle


@pytest.mark.parametrize("path", CONFIGS)
def test_config_trains_one_step(path, tmp_path):
    cfg = load_config(os.path.join(REPO, path))
    if "R_50" not in path:  # the R50 Sampling-Free baselines use ImageNet weights as D2 does
        assert cfg.train.init_checkpoint == "", "from scratch: no pretrained weights"
    cfg.train.device = "cpu"
    cfg.train.output_dir = str(tmp_path)
    d = cfg.dataloader
    d.train.dataset.names = "scratchdet_shapes_val"
    d.train.total_batch_size = 2
    d.train.num_workers = 0
    is_ssd = d.train.mapper._target_ is SSDDatasetMapper
    if not is_ssd:
        assert d.train.mapper._target_ is DatasetMapper
        d.train.mapper.augmentations = [L(T.Resize)(shape=(160, 160))]
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    if prior_heads(model):  # Sampling-Free: the prior is counted before the first step
        counts = initialize_priors(cfg, model, progress=False)
        assert all(0 < c.prior < 1 for c in counts.values())
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    sched = instantiate(cfg.lr_multiplier)
    assert 0 < sched(0.0) <= 1 and sched(0.999) < sched(0.5) + 1e-12
    loader = instantiate(d.train)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SimpleTrainer(model, loader, optim)
    with EventStorage(0) as storage:
        trainer.iter = 0
        trainer.run_step()
        losses = {k: v.latest() for k, v in storage.histories().items() if k.startswith("loss")}
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}  # not frozen
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in params.values())
    if getattr(model, "loss", None) == "multibox":
        # SSD's hard negative mining trains the positives and 3x as many negatives: with
        # the few small shapes of 2 images, the coarse extra levels (and their head convs)
        # may have no trained anchor; the ResNet stages feed every level
        params = {n: p for n, p in params.items() if n.startswith("backbone.bottom_up.")}
    # Levels without a positive anchor in a 2-image batch legitimately give their box
    # predictor no gradient, and warm-up starts with a tiny lr, so not every tensor moves.
    with_grad = [n for n, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(with_grad) > 0.8 * len(params), sorted(set(params) - set(with_grad))
    changed = sum(not torch.equal(before[n], params[n]) for n in with_grad)
    assert changed > 0.5 * len(with_grad)
    if is_ssd:  # inputs really are SSD300
        batch = next(iter(instantiate(d.train)))
        assert all(x["image"].shape[-2:] == (300, 300) for x in batch)
