"""The real-COCO subset in ../shared/data/coco_mini ($SCRATCHDET_COCO_MINI overrides)."""
import os

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.evaluation import COCOEvaluator

from scratchdet.data import coco_mini_root

from .loader import detection_dataloader

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

dataloader = detection_dataloader(
    train="coco_mini_train",
    test="coco_mini_val",
    train_augs=[
        L(T.ResizeShortestEdge)(short_edge_length=(224, 256, 288), max_size=384,
                                sample_style="choice"),
        L(T.RandomFlip)(horizontal=True),
    ],
    test_augs=[L(T.ResizeShortestEdge)(short_edge_length=256, max_size=384)],
    evaluator=COCOEvaluator,
    batch_size=2,
    num_workers=0,
)
dataloader.evaluator.output_dir = None
