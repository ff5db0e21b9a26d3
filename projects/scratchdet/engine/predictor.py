"""Single-image inference from a LazyConfig or a yacs (YAML) config.

:class:`LazyPredictor` is Detectron2's :class:`~detectron2.engine.DefaultPredictor` for
LazyConfig files: the same call contract (one BGR ``np.ndarray`` in, the model's output
dict out), with the test-time augmentations and image format of the config's test
mapper. :class:`FittingDefaultPredictor` is ``DefaultPredictor`` for yacs configs.
:func:`build_predictor` picks one of the two from the config file's extension. Both
refuse a checkpoint that does not fit the config's model
(:func:`~scratchdet.engine.checkpoint.load_fitting_checkpoint`), which Detectron2 would
run with the unloaded parameters at their random initialisation.
"""
import os
from typing import List, Optional

import numpy as np
import torch

import detectron2.data.transforms as T
from detectron2.config import get_cfg, instantiate
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor

from ..config import add_scratchdet_config
from .checkpoint import load_fitting_checkpoint

__all__ = ["FittingDefaultPredictor", "LazyPredictor", "build_predictor", "check_weights"]


def check_weights(weights: str) -> str:
    """Raise ``FileNotFoundError`` naming ``weights`` unless it exists (URLs pass)."""
    if not weights:
        raise ValueError("no weights given: pass a checkpoint written by train_net.py")
    if "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"weights file {weights!r} does not exist")
    return weights


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class LazyPredictor:
    """
    ``DefaultPredictor`` for a LazyConfig: builds ``cfg.model`` on ``cfg.train.device``,
    loads ``weights`` (``cfg.train.init_checkpoint`` when None; ``CheckpointMismatchError``
    when they do not fit the model), and preprocesses like
    ``cfg.dataloader.test.mapper`` (its ``augmentations`` and ``image_format``).

    Attributes: ``model`` (eval mode), ``metadata`` (of the first test dataset, or
    None), ``aug`` (:class:`~detectron2.data.transforms.AugmentationList`),
    ``input_format``.
    """

    def __init__(self, cfg, weights: Optional[str] = None):
        from .lazy_train import _test_dataset_names, build_model  # (import cycle otherwise)

        self.cfg = cfg
        self.model = build_model(cfg)
        self.model.eval()
        load_fitting_checkpoint(self.model, check_weights(weights or cfg.train.init_checkpoint))
        self.metadata = None
        test = cfg.get("dataloader", {}).get("test", None)
        names = _test_dataset_names(cfg) if test is not None else []
        if names:
            self.metadata = MetadataCatalog.get(names[0])
        mapper = test.mapper if test is not None else {}
        # a list of LazyCalls, or one LazyCall returning the list (the SSD300 configs)
        self.aug = T.AugmentationList(list(instantiate(mapper.get("augmentations", []))))
        self.input_format = mapper.get("image_format", "BGR")
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"dataloader.test.mapper.image_format={self.input_format!r}: "
                             "the predictor supports 'RGB' and 'BGR'")

    def __call__(self, original_image: np.ndarray) -> dict:
        """original_image: (H, W, 3) uint8 BGR. Returns the model's output dict for it
        (``instances`` in the original image's coordinates)."""
        with torch.no_grad():
            if self.input_format == "RGB":
                original_image = original_image[:, :, ::-1]
            height, width = original_image.shape[:2]
            aug_input = T.AugInput(np.ascontiguousarray(original_image))
            self.aug(aug_input)
            image = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
            return self.model([{"image": image, "height": height, "width": width}])[0]


class FittingDefaultPredictor(DefaultPredictor):
    """Detectron2's ``DefaultPredictor`` (yacs ``cfg``), except that ``cfg.MODEL.WEIGHTS``
    must fit the model: ``CheckpointMismatchError`` names what does not."""

    def __init__(self, cfg):
        unloaded = cfg.clone()
        unloaded.defrost()
        unloaded.MODEL.WEIGHTS = ""  # DefaultPredictor loads nothing; loaded strictly below
        super().__init__(unloaded)
        load_fitting_checkpoint(self.model, cfg.MODEL.WEIGHTS)
        self.cfg = cfg.clone()


def build_predictor(config_file: str, weights: str, opts: List[str] = (),
                    device: Optional[str] = None):
    """
    A predictor for ``config_file``: :class:`LazyPredictor` for ``.py`` LazyConfigs
    (``opts`` are ``key=value`` overrides), :class:`FittingDefaultPredictor` for ``.yaml``
    configs (``opts`` are ``KEY VALUE`` pairs; ``add_scratchdet_config`` keys included,
    ``DATASETS.COCO_INSTANCES`` registered). ``device`` defaults to CUDA when present.
    ``weights`` that do not fit the model raise ``CheckpointMismatchError``.
    """
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    device = device or _default_device()
    check_weights(weights)
    if config_file.endswith(".py"):
        from .lazy_train import load_config

        cfg = load_config(config_file, list(opts) + [f"train.device={device}"])
        return LazyPredictor(cfg, weights)
    if config_file.endswith((".yaml", ".yml")):
        from ..data import register_datasets_from_yacs

        cfg = add_scratchdet_config(get_cfg())
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
        cfg.MODEL.WEIGHTS = weights
        cfg.MODEL.DEVICE = device
        register_datasets_from_yacs(cfg)
        cfg.freeze()
        return FittingDefaultPredictor(cfg)
    raise ValueError(f"config file {config_file!r}: expected a LazyConfig (.py) or a "
                     "yacs config (.yaml)")
