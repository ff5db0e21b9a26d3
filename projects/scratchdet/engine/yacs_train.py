"""Training and evaluation of yacs (YAML) configs behind ``train_net.py``.

It is Detectron2's ``tools/train_net.py``: a :class:`DefaultTrainer` (model, optimizer,
LR scheduler, data loader from the config; periodic checkpoints, evaluation on
``DATASETS.TEST``, writers), ``--eval-only`` with ``MODEL.WEIGHTS``, ``--resume``, and
``KEY VALUE`` overrides. :class:`ScratchDetTrainer` adds what scratchdet's models need:

- the Sampling-Free priors are counted from ``DATASETS.TRAIN`` and the yacs mapper's
  resize before the first iteration (:class:`~scratchdet.sampling_free.PriorInitHook`:
  the same counter, cache and checkpoint buffers as the LazyConfig trainer), also when
  the run starts from a checkpoint of other data (``MODEL.WEIGHTS``);
- checkpoints are written atomically, never of a model with non-finite weights, and
  ``--resume`` skips an incomplete last checkpoint (:class:`AtomicCheckpointer`);
- the datasets of ``DATASETS.COCO_INSTANCES`` are registered, and the embedded shapes
  splits are generated on first use, before anything reads them.
"""
import difflib
import logging
import os
import weakref
from typing import Dict, List, Sequence

import torch

from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.utils import comm

from ..config import add_scratchdet_config
from ..data import register_datasets_from_yacs
from ..sampling_free import PriorInitHook
from .checkpoint import AtomicCheckpointer, load_fitting_checkpoint
from .lazy_train import ConfigOverrideError, eval_checkpoint, setup_run

__all__ = ["ScratchDetTrainer", "load_yacs_config", "main", "is_yacs_config"]

logger = logging.getLogger("scratchdet")

YACS_SUFFIXES = (".yaml", ".yml")


def is_yacs_config(config_file: str) -> bool:
    """Whether ``config_file`` is a yacs config (YAML) rather than a LazyConfig (.py)."""
    return config_file.lower().endswith(YACS_SUFFIXES)


def _merge_overrides(cfg, opts: Sequence[str], config_file: str) -> None:
    """``cfg.merge_from_list(opts)`` pair by pair; a bad pair raises
    :class:`ConfigOverrideError` naming the config file, the key and the value."""
    opts = list(opts)
    where = f" (config {config_file})"
    options = [o for o in opts if o.startswith("--")]
    if options:
        raise ConfigOverrideError(
            f"overrides {opts}{where}: {options} come after the first KEY VALUE pair, so "
            "they are read as overrides; put the options (--resume, --eval-only, ...) "
            "before the overrides")
    if len(opts) % 2:
        raise ConfigOverrideError(
            f"overrides {opts}{where}: a yacs config takes KEY VALUE pairs, e.g. "
            f"SOLVER.MAX_ITER 100; {opts[-1]!r} has no value")
    for key, value in zip(opts[0::2], opts[1::2]):
        try:
            cfg.merge_from_list([key, value])
        except (KeyError, ValueError, AssertionError) as e:
            hint = ""
            if "=" in key:
                hint = (f"; a yacs config takes KEY VALUE pairs ({key.split('=', 1)[0]} "
                        f"{key.split('=', 1)[1]}), not key=value")
            elif key not in _flat_keys(cfg):
                close = difflib.get_close_matches(key, _flat_keys(cfg), n=3, cutoff=0.8)
                if close:
                    hint = "; did you mean " + " or ".join(close) + "?"
            raise ConfigOverrideError(f"override {key} {value}{where}: {e}{hint}") from e


def _flat_keys(node, prefix: str = "") -> List[str]:
    """The dotted keys of a yacs config's leaves."""
    out = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        out.extend(_flat_keys(v, key + ".") if isinstance(v, CfgNode) else [key])
    return out


def load_yacs_config(config_file: str, opts: Sequence[str] = ()):
    """
    ``get_cfg()`` with scratchdet's keys (:func:`add_scratchdet_config`), merged with
    ``config_file`` and the ``KEY VALUE`` overrides ``opts``, then frozen; the datasets of
    ``DATASETS.COCO_INSTANCES`` are registered. Errors name the file, key and value.
    """
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    cfg = add_scratchdet_config(get_cfg())
    try:
        cfg.merge_from_file(config_file)
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigOverrideError(f"config file {config_file}: {e}") from e
    _merge_overrides(cfg, opts, config_file)
    cfg.freeze()
    register_datasets_from_yacs(cfg)
    return cfg


def _check_device(cfg) -> None:
    device = str(cfg.MODEL.DEVICE)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"MODEL.DEVICE={device!r} but CUDA is not available here; add the "
                           "override MODEL.DEVICE cpu")
    if not device.startswith("cuda") and comm.get_world_size() > 1:
        raise RuntimeError(
            f"MODEL.DEVICE={device!r} with {comm.get_world_size()} processes: Detectron2's "
            "DefaultTrainer puts each process on its own GPU; train a yacs config on the "
            "CPU in one process (or use the config's LazyConfig .py for several)")


class ScratchDetTrainer(DefaultTrainer):
    """
    Detectron2's :class:`DefaultTrainer` for scratchdet's yacs configs (see the module
    docstring): a :class:`PriorInitHook` runs first, the checkpointer is an
    :class:`AtomicCheckpointer`, and the evaluator is Detectron2's COCOEvaluator (tasks
    bbox, plus segm with ``MODEL.MASK_ON``, keypoints with ``MODEL.KEYPOINT_ON``; or
    PascalVOCDetectionEvaluator for a dataset whose ``evaluator_type`` is
    ``"pascal_voc"``). Use it as ``DefaultTrainer``::

        trainer = ScratchDetTrainer(cfg)
        trainer.resume_or_load(resume=False)  # MODEL.WEIGHTS, or the last checkpoint
        trainer.train()
    """

    def build_hooks(self):
        # DefaultTrainer.__init__ creates its DetectionCheckpointer just before this
        # call; replace it here, before the PeriodicCheckpointer takes it
        self.checkpointer = AtomicCheckpointer(self.model, self.cfg.OUTPUT_DIR,
                                               trainer=weakref.proxy(self))
        return [PriorInitHook(self.cfg, self.model, self.checkpointer)] + super().build_hooks()

    def resume_or_load(self, resume: bool = True) -> None:
        """As :meth:`DefaultTrainer.resume_or_load`; training continues after the
        iteration of the checkpoint actually resumed from (see
        :meth:`AtomicCheckpointer.resumable_checkpoint`)."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        self.start_iter = self.iter + 1 if self.checkpointer.resumed_from else 0
        if self.checkpointer.resumed_from:
            logger.info("resumed from %s at iteration %d", self.checkpointer.resumed_from,
                        self.iter)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        meta = MetadataCatalog.get(dataset_name)
        json_file = meta.get("json_file", None)
        if json_file and not os.path.isfile(json_file):
            DatasetCatalog.get(dataset_name)  # a generated split (shapes): generate it now
        if meta.get("evaluator_type", "coco") == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        # the tasks named, not inferred from the predictions: segm is scored (NaN) even
        # when a mask model detects nothing
        tasks = ("bbox",) + (("segm",) if cfg.MODEL.MASK_ON else ()) + \
            (("keypoints",) if cfg.MODEL.KEYPOINT_ON else ())
        return COCOEvaluator(dataset_name, tasks=tasks,
                             output_dir=os.path.join(cfg.OUTPUT_DIR, "inference"))


def main(args) -> Dict:
    """
    ``train_net.py`` for a YAML config (runs in every launched process): train (and
    evaluate on ``DATASETS.TEST``) or, with ``--eval-only``, evaluate ``MODEL.WEIGHTS``.
    Like the LazyConfig path, a training run refuses an ``OUTPUT_DIR`` that holds
    checkpoints unless ``--resume`` or ``--overwrite``, and ``--eval-only`` refuses
    weights that do not fit the model (:func:`load_fitting_checkpoint`).
    """
    cfg = load_yacs_config(args.config_file, args.opts)
    _check_device(cfg)
    setup_run(cfg, args, cfg.OUTPUT_DIR)
    if args.eval_only:
        weights = eval_checkpoint(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS ")
        model = ScratchDetTrainer.build_model(cfg)
        load_fitting_checkpoint(model, weights)  # refuses one of another class count / model
        return ScratchDetTrainer.test(cfg, model)
    trainer = ScratchDetTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
