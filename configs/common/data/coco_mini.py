"""The real-COCO subset in ../shared/data/coco_mini ($SCRATCHDET_COCO_MINI overrides)."""
import os

from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import COCOEvaluator

from scratchdet.data import coco_mini_root

_root = coco_mini_root()
# registered by train_net.py before anything is built; a path may be overridden, e.g.
# datasets.coco_mini_val.json_file=/data/coco/annotations/instances_val2017.json
datasets = {
    f"coco_mini_{split}": dict(
        json_file=os.path.join(_root, "annotations", f"instances_{split}2017.json"),
        image_root=os.path.join(_root, f"{split}2017"),
    )
    for split in ("train", "val")
}

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_mini_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=(224, 256, 288), max_size=384,
                                   sample_style="choice"),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
    ),
    total_batch_size=2,
    num_workers=0,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_mini_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=256, max_size=384)],
        image_format="BGR",
    ),
    num_workers=0,
)
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}", output_dir=None)
