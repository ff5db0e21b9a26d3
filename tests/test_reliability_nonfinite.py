"""Annotations whose bbox is not finite (``NaN``, ``Infinity`` in the JSON, which Python's
``json`` reads): dropped when a dataset is loaded, with one warning that names them, so
that training and the prior see the same data; the prior estimator refuses such a box if
handed one. Real code throughout: registration, the config's train loader and mapper,
the prior estimator."""
import copy
import json
import logging
import os

import numpy as np
import pytest
import torch

from detectron2.config import LazyCall as L
from detectron2.config import get_cfg, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from scratchdet import add_scratchdet_config
from scratchdet.data import (
    ShapesSpec,
    generate_shapes,
    register_coco_dataset,
    register_datasets_from_yacs,
)
from scratchdet.data.shapes import _load as load_shapes
from scratchdet.engine import load_config
from scratchdet.sampling_free import AnchorCounter, count_dataset, estimate_priors, prior_heads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SF_COCO_MINI = os.path.join(REPO, "configs", "coco_mini",
                            "sampling_free_root_resnet18_fpn_coco_mini.py")
NAN, INF = float("nan"), float("inf")


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _unregister(name):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.fixture
def nonfinite_coco_mini(coco_mini, tmp_path):
    """coco_mini val's annotation file with one box made NaN and another one of infinite
    width (Detectron2's mapper would keep it, clipped, as a box reaching the image's right
    edge), written by ``json.dump`` (``NaN``, ``Infinity``); and the same file without the
    two. Returns (bad file, clean file, the two annotations, image id -> file_name)."""
    with open(os.path.join(coco_mini, "annotations", "instances_val2017.json")) as f:
        d = json.load(f)
    anns = d["annotations"]
    i = next(k for k, a in enumerate(anns) if a["image_id"] != anns[0]["image_id"])
    anns[0]["bbox"] = [NAN, 10.0, 20.0, 20.0]
    anns[i]["bbox"] = [10.0, 10.0, INF, 20.0]
    bad_file, clean_file = str(tmp_path / "nonfinite.json"), str(tmp_path / "clean.json")
    with open(bad_file, "w") as f:
        json.dump(d, f)
    with open(clean_file, "w") as f:
        json.dump(dict(d, annotations=[a for a in anns if a not in (anns[0], anns[i])]), f)
    assert "NaN" in open(bad_file).read() and "Infinity" in open(bad_file).read()
    files = {im["id"]: im["file_name"] for im in d["images"]}
    return bad_file, clean_file, [anns[0], anns[i]], files


def _images(names, image_ids):
    """The dataset ``names`` reduced to ``image_ids`` (a config's dataset)."""
    return [d for d in DatasetCatalog.get(names) if d["image_id"] in image_ids]


def test_nonfinite_boxes_dropped_from_training_and_prior_with_one_warning(
        coco_mini, nonfinite_coco_mini, log):
    """A dataset registered with register_coco_dataset: its dicts, hence the prior and the
    config's train loader, are exactly those of the file without the NaN and the
    infinite box; one warning counts and names both, however often the dataset is read."""
    bad_file, clean_file, bad, files = nonfinite_coco_mini
    root = os.path.join(coco_mini, "val2017")
    for name, json_file in (("rel_nonfinite", bad_file), ("rel_nonfinite_clean", clean_file)):
        _unregister(name)
        register_coco_dataset(name, json_file, root)
    dicts = DatasetCatalog.get("rel_nonfinite")
    # the loaded dicts are those of the file without the two annotations
    assert dicts == DatasetCatalog.get("rel_nonfinite_clean")
    assert all(np.isfinite(a["bbox"]).all() for d in dicts for a in d["annotations"])
    cfg = load_config(SF_COCO_MINI)
    model = instantiate(cfg.model)
    counts = {}
    for name in ("rel_nonfinite", "rel_nonfinite_clean"):
        cfg.dataloader.train.dataset.names = name
        c = estimate_priors(cfg, model, use_cache=False, progress=False)["retinanet"]
        counts[name] = (c.num_images, c.num_foreground, c.num_valid, c.per_class)
    assert counts["rel_nonfinite"] == counts["rel_nonfinite_clean"]
    # the config's train loader (mapper and all) on the two images
    d = cfg.dataloader.train
    d.dataset = L(_images)(names="rel_nonfinite", image_ids=[a["image_id"] for a in bad])
    d.total_batch_size, d.num_workers = 2, 0
    batch = next(iter(instantiate(d)))
    assert sorted(x["image_id"] for x in batch) == sorted(a["image_id"] for a in bad)
    clean = {x["image_id"]: x for x in DatasetCatalog.get("rel_nonfinite_clean")}
    for x in batch:  # the infinite box, clipped, would have been one more
        boxes = x["instances"].gt_boxes.tensor
        assert torch.isfinite(boxes).all()
        assert len(boxes) == sum(a.get("iscrowd", 0) == 0
                                 for a in clean[x["image_id"]]["annotations"])
    # one warning for the four reads (two here, the prior, the loader)
    msgs = [m for m in _warnings(log) if "not finite" in m]
    assert len(msgs) == 1, msgs
    msg = msgs[0]
    assert "'rel_nonfinite'" in msg and "2 annotation(s)" in msg and bad_file in msg, msg
    for a in bad:
        assert f"annotation id {a['id']!r} of image {a['image_id']!r}" in msg, msg
        assert files[a["image_id"]] in msg, msg
    assert "[nan, 10.0, 20.0, 20.0]" in msg and "[10.0, 10.0, inf, 20.0]" in msg, msg


def test_prior_counter_refuses_a_nonfinite_box(coco_mini, nonfinite_coco_mini):
    """Dicts that did not go through the registered loader (Detectron2's load_coco_json
    directly): the counter raises ValueError naming the image and the box, rather than
    count the infinite box as the clipped one training would see."""
    bad_file, _, bad, files = nonfinite_coco_mini
    raw = load_coco_json(bad_file, os.path.join(coco_mini, "val2017"))
    cfg = load_config(SF_COCO_MINI)
    model = instantiate(cfg.model)
    for a in bad:
        image = [d for d in raw if d["image_id"] == a["image_id"]]
        with pytest.raises(ValueError, match="not finite") as e:
            estimate_priors(cfg, model, dataset_dicts=image, use_cache=False, progress=False)
        assert files[a["image_id"]] in str(e.value) and str(a["bbox"]) in str(e.value)
    # a crowd box is never counted, so it is no error
    image = copy.deepcopy([d for d in raw if d["image_id"] == bad[0]["image_id"]])
    for x in image[0]["annotations"]:
        x["iscrowd"] = int(not np.isfinite(x["bbox"]).all())
    (_, gen, matcher, head_classes, _), = prior_heads(model)
    counter = AnchorCounter(gen, matcher, model.num_classes, model.backbone.size_divisibility)
    assert count_dataset(image, counter, progress=False).num_foreground > 0


def test_yacs_and_shapes_datasets_drop_nonfinite_boxes(coco_mini, nonfinite_coco_mini, tmp_path,
                                                        log):
    """The other ways a dataset is registered load through the same check: yacs
    DATASETS.COCO_INSTANCES, and the generated shapes splits."""
    bad_file, clean_file, _, _ = nonfinite_coco_mini
    _unregister("rel_nonfinite_yacs")
    cfg = add_scratchdet_config(get_cfg())
    cfg.DATASETS.COCO_INSTANCES = [["rel_nonfinite_yacs", bad_file,
                                    os.path.join(coco_mini, "val2017")]]
    register_datasets_from_yacs(cfg)
    dicts = DatasetCatalog.get("rel_nonfinite_yacs")
    assert dicts == load_coco_json(clean_file, os.path.join(coco_mini, "val2017"),
                                   "rel_nonfinite_yacs")
    spec = ShapesSpec(num_images=3, seed=1, max_objects=4)
    out = str(tmp_path / "shapes")
    ann = generate_shapes(spec, out)
    with open(ann) as f:
        d = json.load(f)
    d["annotations"][0]["bbox"][2] = -INF
    with open(ann, "w") as f:
        json.dump(d, f)
    dicts = load_shapes("rel_nonfinite_shapes", spec, out)
    assert sum(len(x["annotations"]) for x in dicts) == len(d["annotations"]) - 1
    msgs = [m for m in _warnings(log) if "not finite" in m]
    assert len(msgs) == 2 and "'rel_nonfinite_yacs'" in msgs[0], msgs
    assert "'rel_nonfinite_shapes'" in msgs[1] and "1 annotation(s)" in msgs[1], msgs
