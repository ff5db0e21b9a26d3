"""Data loaders whose image errors name the file and the dataset.

Detectron2's mappers (``DatasetMapper``, and :class:`SSDDatasetMapper` built on it) read
images with ``detection_utils.read_image``; a missing, unreadable or corrupt file raises
PIL's or the OS's error, which names neither the dataset nor, for a truncated JPEG, the
file. :func:`build_train_loader` and :func:`build_test_loader` are Detectron2's
``build_detection_{train,test}_loader`` with the mapper wrapped in
:class:`NamedImageErrors`, which re-raises such an error as :class:`ImageReadError`
(an ``OSError``) naming both. The configs use them (see ``configs/common/data/loader.py``);
the mapper itself, ``dataloader.{train,test}.mapper``, is unchanged.
"""
import os
from typing import Callable, Dict, List, Optional, Sequence, Union

from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)

__all__ = ["ImageReadError", "NamedImageErrors", "build_train_loader", "build_test_loader"]


class ImageReadError(OSError):
    """An image of a dataset could not be read or decoded. ``file_name`` and ``dataset``
    are set when raised by :class:`NamedImageErrors` (the message names both)."""

    def __init__(self, message: str, file_name: Optional[str] = None,
                 dataset: Optional[str] = None):
        super().__init__(message)
        self.file_name, self.dataset = file_name, dataset

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


def _names(dataset_names) -> List[str]:
    if dataset_names is None:
        return []
    if isinstance(dataset_names, str):
        return [dataset_names]
    return [str(n) for n in dataset_names]


def _image_root(name: str) -> Optional[str]:
    meta = MetadataCatalog.get(name)
    root = meta.get("image_root", None) or meta.get("dirname", None)
    return os.path.abspath(root) if root else None


def dataset_of_file(file_name: str, dataset_names: Sequence[str] = ()) -> str:
    """
    The dataset that ``file_name`` belongs to, quoted, for messages: among ``dataset_names`` (or,
    if none are given, every registered dataset) those whose metadata ``image_root``
    (COCO) or ``dirname`` (VOC) holds the file; else ``dataset_names`` themselves.
    """
    path = os.path.abspath(file_name)
    registered = set(DatasetCatalog.list())
    found = []
    for name in list(dataset_names) or sorted(registered):
        root = _image_root(name) if name in registered else None
        if root and path.startswith(root.rstrip(os.sep) + os.sep):
            found.append(name)
    names = found or list(dataset_names)
    return " or ".join(repr(n) for n in names) if names else "<unregistered>"


class NamedImageErrors:
    """
    A mapper that calls ``mapper`` and turns an ``OSError`` (a missing or unreadable
    file, PIL's ``UnidentifiedImageError``, "image file is truncated") into an
    :class:`ImageReadError` naming the image file and its dataset, chained to the
    original error. Other errors, and the mapper's outputs, pass through unchanged.

    Args:
        mapper: the wrapped mapper (e.g. a ``DatasetMapper``).
        dataset_names: the loader's datasets (``dataset.names`` of the config).
    """

    def __init__(self, mapper: Callable[[Dict], Dict], dataset_names=None):
        self.mapper = mapper
        self.dataset_names = _names(dataset_names)

    def __call__(self, dataset_dict: Dict):
        try:
            return self.mapper(dataset_dict)
        except ImageReadError:
            raise
        except OSError as e:
            file_name = dataset_dict.get("file_name", None)
            if file_name is None:
                raise
            dataset = dataset_of_file(file_name, self.dataset_names)
            what = "does not exist" if isinstance(e, FileNotFoundError) else \
                "cannot be read or decoded"
            raise ImageReadError(
                f"image {file_name!r} of dataset {dataset} {what} "
                f"({type(e).__name__}: {e})", file_name=file_name, dataset=dataset) from e

    def __repr__(self) -> str:
        return f"NamedImageErrors({self.mapper!r}, dataset_names={self.dataset_names})"


def build_train_loader(dataset, *, mapper, dataset_names: Union[str, Sequence[str], None] = None,
                       **kwargs):
    """Detectron2's ``build_detection_train_loader`` (same arguments) with ``mapper``
    wrapped in :class:`NamedImageErrors` for ``dataset_names``."""
    return build_detection_train_loader(
        dataset, mapper=NamedImageErrors(mapper, dataset_names), **kwargs)


def build_test_loader(dataset, *, mapper, dataset_names: Union[str, Sequence[str], None] = None,
                      **kwargs):
    """Detectron2's ``build_detection_test_loader`` (same arguments) with ``mapper``
    wrapped in :class:`NamedImageErrors` for ``dataset_names``."""
    return build_detection_test_loader(
        dataset, mapper=NamedImageErrors(mapper, dataset_names), **kwargs)
