"""A DatasetMapper that lets box-aware augmentations (MinIoURandomCrop) see the boxes."""
import copy

import numpy as np
import torch

from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

__all__ = ["SSDDatasetMapper"]


class SSDDatasetMapper(DatasetMapper):
    """
    Detectron2's :class:`DatasetMapper` (same constructor) with two changes needed by
    SSD's augmentation: the annotations' boxes are passed to the augmentations
    (``AugInput(image, boxes=...)``), and after the transforms an annotation is kept only
    if its box centre lies inside the output image, as SSD does after a random crop.
    Detectron2 then clips the kept boxes to the image as usual.
    """

    def __call__(self, dataset_dict):
        if not self.is_train:
            return super().__call__(dataset_dict)
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        annos = [a for a in dataset_dict.pop("annotations", []) if a.get("iscrowd", 0) == 0]
        boxes = np.array(
            [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos],
            dtype=np.float64,
        ).reshape(-1, 4)
        aug_input = T.AugInput(image, boxes=boxes)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        h, w = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if len(boxes):
            moved = transforms.apply_box(boxes)
            cx, cy = (moved[:, 0] + moved[:, 2]) / 2, (moved[:, 1] + moved[:, 3]) / 2
            keep = (cx > 0) & (cx < w) & (cy > 0) & (cy < h)
            annos = [a for a, k in zip(annos, keep) if k]
        dataset_dict["annotations"] = annos
        self._transform_annotations(dataset_dict, transforms, (h, w))
        return dataset_dict
