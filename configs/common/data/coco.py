"""COCO 2017 (Detectron2's builtin ``coco_2017_*``, under $DETECTRON2_DATASETS/coco)."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.evaluation import COCOEvaluator

from .loader import detection_dataloader

dataloader = detection_dataloader(
    train="coco_2017_train",
    test="coco_2017_val",
    train_augs=[
        L(T.ResizeShortestEdge)(short_edge_length=(640, 672, 704, 736, 768, 800),
                                sample_style="choice", max_size=1333),
        L(T.RandomFlip)(horizontal=True),
    ],
    test_augs=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
    evaluator=COCOEvaluator,
)
