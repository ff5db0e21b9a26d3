"""Datasets (embedded shapes, COCO at any path), SSD augmentations and mapper."""
from .coco import (
    coco_mini_root,
    register_coco_dataset,
    register_datasets_from_config,
    register_datasets_from_yacs,
)
from .shapes import SHAPES_CLASSES, ShapesSpec, generate_shapes, register_shapes, shapes_dir
from .ssd_augment import (
    Expand,
    MinIoURandomCrop,
    PhotometricDistort,
    ssd_test_augmentations,
    ssd_train_augmentations,
)
from .ssd_mapper import SSDDatasetMapper
