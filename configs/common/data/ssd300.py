"""SSD300 input pipeline: photometric distortion, zoom-out up to 4x, min-IoU crop
(0.1..0.9), resize to 300x300, flip; test: resize to 300x300. Apply to any dataloader."""
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper

from scratchdet.data import SSDDatasetMapper, ssd_test_augmentations, ssd_train_augmentations


def make_ssd300(dataloader, image_size=300):
    dataloader.train.mapper = L(SSDDatasetMapper)(
        is_train=True,
        augmentations=L(ssd_train_augmentations)(image_size=image_size, image_format="BGR"),
        image_format="BGR",
    )
    dataloader.test.mapper = L(DatasetMapper)(
        is_train=False,
        augmentations=L(ssd_test_augmentations)(image_size=image_size),
        image_format="BGR",
    )
    return dataloader
