"""One definition of a detection dataloader config (train loader, test loader, evaluator)."""
from omegaconf import OmegaConf

from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, get_detection_dataset_dicts

from scratchdet.data.loader import build_test_loader, build_train_loader


def name_image_errors(dataloader):
    """Build ``dataloader.{train,test}`` with scratchdet's loaders: Detectron2's, whose
    image read errors name the file and the dataset (``dataset.names``). The mappers and
    every other argument are kept. Returns ``dataloader``."""
    for split, builder in (("train", build_train_loader), ("test", build_test_loader)):
        if split in dataloader:
            dataloader[split]._target_ = builder
            dataloader[split].dataset_names = "${oc.select:.dataset.names,null}"
    return dataloader


def detection_dataloader(train, test, train_augs, test_augs, evaluator, batch_size=16,
                         num_workers=4, image_format="BGR"):
    """LazyConfig for ``dataloader.{train,test,evaluator}`` over registered datasets (the
    loaders are Detectron2's, their image read errors naming file and dataset)."""
    dataloader = OmegaConf.create()
    dataloader.train = L(build_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names=train),
        mapper=L(DatasetMapper)(is_train=True, augmentations=train_augs,
                                image_format=image_format),
        total_batch_size=batch_size,
        num_workers=num_workers,
        dataset_names="${oc.select:.dataset.names,null}",  # named by a read error
    )
    dataloader.test = L(build_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=test, filter_empty=False),
        mapper=L(DatasetMapper)(is_train=False, augmentations=test_augs,
                                image_format=image_format),
        num_workers=num_workers,
        dataset_names="${oc.select:.dataset.names,null}",
    )
    dataloader.evaluator = L(evaluator)(dataset_name="${..test.dataset.names}")
    return dataloader
