"""The ScratchDet demo detector as a whole: from-scratch gradients, BN head, config datasets."""
import os

import torch

from detectron2.config import instantiate
from detectron2.data import DatasetCatalog
from detectron2.layers import CycleBatchNormList
from detectron2.utils.events import EventStorage

from scratchdet.engine import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "shapes", "scratchdet_root_resnet18_fpn_demo.py")


def test_every_parameter_of_the_detector_learns_from_scratch():
    cfg = load_config(DEMO)
    cfg.dataloader.train.dataset.names = "scratchdet_shapes_val"
    cfg.dataloader.train.total_batch_size = 4
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    # BN in the head with per-level statistics (Detectron2's RetinaNetHead norm="BN")
    norms = [m for m in model.head.modules() if isinstance(m, CycleBatchNormList)]
    assert len(norms) == 4 and all(len(n) == 5 for n in norms)
    batch = next(iter(instantiate(cfg.dataloader.train)))
    assert any(len(x["instances"]) for x in batch)
    with EventStorage(0):
        losses = model(batch)
    sum(losses.values()).backward()
    dead = [n for n, p in model.named_parameters()
            if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0]
    assert not dead, dead


def test_datasets_can_be_registered_from_the_command_line(coco_mini):
    ann = os.path.join(coco_mini, "annotations", "instances_train2017.json")
    cfg = load_config(DEMO, [f"datasets.cli_mini.json_file={ann}",
                             f"datasets.cli_mini.image_root={coco_mini}/train2017",
                             "dataloader.train.dataset.names=cli_mini"])
    assert cfg.dataloader.train.dataset.names == "cli_mini"
    assert len(DatasetCatalog.get("cli_mini")) == 80
