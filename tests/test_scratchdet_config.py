"""``add_scratchdet_config`` only adds keys; every yacs YAML in configs/ sets
``MODEL.BACKBONE.FREEZE_AT`` itself (its bases), so none relies on a default."""
import glob
import os

import pytest

from detectron2.config import CfgNode, get_cfg

from scratchdet import add_scratchdet_config
from scratchdet.engine.yacs_train import load_yacs_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAMLS = sorted(os.path.relpath(p, REPO) for p in
               glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))
ADDED = ("MODEL.ROOT_RESNET.", "MODEL.SSD.", "MODEL.SAMPLING_FREE.", "MODEL.FCOS.",
         "DATASETS.COCO_INSTANCES")


def _leaves(node: CfgNode, prefix: str = ""):
    """{dotted key: value} of a yacs config's leaves."""
    out = {}
    for k, v in node.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, CfgNode) else {prefix + k: v})
    return out


def test_add_scratchdet_config_changes_no_existing_key():
    before = _leaves(get_cfg())
    after = _leaves(add_scratchdet_config(get_cfg()))
    assert {k: after[k] for k in before} == before
    added = set(after) - set(before)
    assert added and all(k.startswith(ADDED) for k in added), sorted(added)
    for prefix in ADDED:
        assert any(k.startswith(prefix) for k in added), prefix


def test_yaml_list_covers_the_bases():
    assert len(YAMLS) >= 30
    for base in ("Base-ScratchDet300", "Base-ScratchDet-RetinaNet-FPN",
                 "Base-SamplingFree-RetinaNet", "Base-SamplingFree-RCNN-FPN",
                 "Base-SamplingFree-FCOS"):
        assert f"configs/{base}.yaml" in YAMLS, base


@pytest.mark.parametrize("path", YAMLS)
def test_every_yaml_sets_freeze_at(path):
    """0 (from scratch) unless the config starts from ImageNet weights (R-50: 2)."""
    cfg = add_scratchdet_config(get_cfg())
    cfg.MODEL.BACKBONE.FREEZE_AT = -1  # a value no default has: the YAML chain must set it
    cfg.merge_from_file(os.path.join(REPO, path))
    pretrained = cfg.MODEL.WEIGHTS.startswith("detectron2://ImageNetPretrained/")
    assert pretrained or cfg.MODEL.WEIGHTS == "", cfg.MODEL.WEIGHTS
    assert cfg.MODEL.BACKBONE.FREEZE_AT == (2 if pretrained else 0)


def test_yacs_train_config_trains_everything_from_scratch():
    cfg = load_yacs_config(os.path.join(REPO, "configs", "shapes",
                                        "sampling_free_root_resnet18_fpn_demo.yaml"))
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.MODEL.WEIGHTS == ""
