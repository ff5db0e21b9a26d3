"""One definition of a detection dataloader config (train loader, test loader, evaluator)."""
from omegaconf import OmegaConf

from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)


def detection_dataloader(train, test, train_augs, test_augs, evaluator, batch_size=16,
                         num_workers=4, image_format="BGR"):
    """LazyConfig for ``dataloader.{train,test,evaluator}`` over registered datasets."""
    dataloader = OmegaConf.create()
    dataloader.train = L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names=train),
        mapper=L(DatasetMapper)(is_train=True, augmentations=train_augs,
                                image_format=image_format),
        total_batch_size=batch_size,
        num_workers=num_workers,
    )
    dataloader.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=test, filter_empty=False),
        mapper=L(DatasetMapper)(is_train=False, augmentations=test_augs,
                                image_format=image_format),
        num_workers=num_workers,
    )
    dataloader.evaluator = L(evaluator)(dataset_name="${..test.dataset.names}")
    return dataloader
