"""The embedded shapes dataset (generated on first use; see scratchdet.data.shapes)."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.evaluation import COCOEvaluator

from .loader import detection_dataloader

dataloader = detection_dataloader(
    train="scratchdet_shapes_train",
    test="scratchdet_shapes_val",
    train_augs=[L(T.RandomFlip)(horizontal=True)],
    test_augs=[],
    evaluator=COCOEvaluator,
    batch_size=8,
    num_workers=1,
)
dataloader.evaluator.output_dir = None
