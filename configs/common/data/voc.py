"""PASCAL VOC 07+12 trainval -> VOC 2007 test (Detectron2's builtin, $DETECTRON2_DATASETS)."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.evaluation import PascalVOCDetectionEvaluator

from .loader import detection_dataloader

dataloader = detection_dataloader(
    train=["voc_2007_trainval", "voc_2012_trainval"],
    test="voc_2007_test",
    train_augs=[
        L(T.ResizeShortestEdge)(
            short_edge_length=(480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800),
            sample_style="choice", max_size=1333),
        L(T.RandomFlip)(horizontal=True),
    ],
    test_augs=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
    evaluator=PascalVOCDetectionEvaluator,
)
