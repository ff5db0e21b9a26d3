"""Datasets (embedded shapes, COCO at any path), SSD augmentations and mapper."""
from .coco import (
    coco_mini_root,
    load_coco_checked,
    register_coco_dataset,
    register_datasets_from_config,
    register_datasets_from_yacs,
)
from .loader import ImageReadError, NamedImageErrors, build_test_loader, build_train_loader
from .shapes import SHAPES_CLASSES, ShapesSpec, generate_shapes, register_shapes, shapes_dir
from .ssd_augment import (
    Expand,
    MinIoURandomCrop,
    PhotometricDistort,
    ssd_test_augmentations,
    ssd_train_augmentations,
)
from .ssd_mapper import SSDDatasetMapper
