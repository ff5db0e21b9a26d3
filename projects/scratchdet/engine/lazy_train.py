"""The LazyConfig training and evaluation loop behind ``train_net.py``.

It follows Detectron2's ``tools/lazyconfig_train_net.py`` (SimpleTrainer/AMPTrainer,
LR scheduler, periodic checkpointer, evaluation hook, console/JSON/TensorBoard writers,
``launch`` for several processes) with what from-scratch training on any machine needs:
datasets registered from the config, CPU multi-process training over GLOO, and the final
evaluation results returned to the caller.
"""
import logging
import os
from typing import Dict, Optional

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    create_ddp_model,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data import register_datasets_from_config
from ..sampling_free import PriorInitHook

__all__ = ["load_config", "build_model", "do_test", "do_train"]

logger = logging.getLogger("scratchdet")


def load_config(config_file: str, overrides=()):
    """LazyConfig.load + overrides; registers the config's ``datasets`` entries."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    cfg = LazyConfig.load(config_file)
    cfg = LazyConfig.apply_overrides(cfg, list(overrides))
    register_datasets_from_config(cfg.get("datasets", None))
    return cfg


def _device(cfg) -> str:
    device = cfg.train.get("device", "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"train.device={device!r} but CUDA is not available here; "
            "add the override train.device=cpu")
    return device


def build_model(cfg):
    model = instantiate(cfg.model)
    model.to(_device(cfg))
    return model


def do_test(cfg, model) -> Dict:
    """Run ``cfg.dataloader.test`` through ``cfg.dataloader.evaluator``; returns its results."""
    if "evaluator" not in cfg.dataloader:
        return {}
    loader = instantiate(cfg.dataloader.test)  # builds (and if needed generates) the data
    evaluator = instantiate(cfg.dataloader.evaluator)
    results = inference_on_dataset(model, loader, evaluator)
    if comm.is_main_process() and results:
        print_csv_format(results)
    return results


def do_train(cfg, model, resume: bool = False) -> Optional[Dict]:
    """
    Train ``model`` as ``cfg.train`` says; returns the last evaluation's results
    (``None`` when no evaluation ran).
    """
    model.train()
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    ddp_kwargs = dict(cfg.train.ddp)
    if _device(cfg) == "cpu":
        ddp_kwargs["device_ids"] = None  # CPU processes (GLOO): no device ids
    model = create_ddp_model(model, **ddp_kwargs)
    trainer_cls = AMPTrainer if cfg.train.amp.enabled else SimpleTrainer
    trainer = trainer_cls(model, train_loader, optim)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    last_results = {}

    def test_and_remember():
        last_results.clear()
        last_results.update(do_test(cfg, model))
        return last_results

    trainer.register_hooks([
        # counts the data's foreground prior for Sampling-Free heads that carry none yet
        PriorInitHook(cfg, model),
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
        if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, test_and_remember),
        hooks.PeriodicWriter(
            default_writers(cfg.train.output_dir, cfg.train.max_iter),
            period=cfg.train.log_period,
        ) if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return dict(last_results) if last_results else None


def main(args):
    """Entry point used by ``train_net.py`` (runs in every launched process)."""
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="scratchdet")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, comm.get_local_size())))
    model = build_model(cfg)
    logger.info("Model:\n{}".format(model))
    if args.eval_only:
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        return do_test(cfg, model)
    return do_train(cfg, model, resume=args.resume)
