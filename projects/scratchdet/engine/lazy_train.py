"""The LazyConfig training and evaluation loop behind ``train_net.py``.

It follows Detectron2's ``tools/lazyconfig_train_net.py`` (SimpleTrainer/AMPTrainer,
LR scheduler, periodic checkpointer, evaluation hook, console/JSON/TensorBoard writers,
``launch`` for several processes) with what from-scratch training on any machine needs:
datasets registered from the config, CPU multi-process training over GLOO, and the final
evaluation results returned to the caller.
"""
import json
import logging
import os
from typing import Dict, List, Optional

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
from detectron2.data import MetadataCatalog
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data import register_datasets_from_config
from ..evaluation import AdaptiveThresholdEvalHook, build_threshold_comparison, score_floor
from ..sampling_free import PriorInitHook

__all__ = ["load_config", "build_model", "do_test", "do_train", "RESULTS_FILE"]

RESULTS_FILE = "evaluation_results.json"  # in train.output_dir: the last evaluation

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


def _adaptive_threshold_cfg(cfg):
    """``cfg.train.adaptive_threshold`` when enabled, else None."""
    at = cfg.train.get("adaptive_threshold", None)
    if not at or not at.get("enabled", False):
        return None
    return at


def _test_dataset_names(cfg) -> List[str]:
    names = cfg.dataloader.test.dataset.get("names", [])
    return [names] if isinstance(names, str) else list(names)


def _class_names(cfg) -> Optional[List[str]]:
    names = _test_dataset_names(cfg)
    return MetadataCatalog.get(names[0]).get("thing_classes", None) if names else None


def _instantiate_evaluator(cfg, primary: bool):
    """``cfg.dataloader.evaluator``; a non-primary copy writes no files (output_dir None),
    so it cannot overwrite the primary evaluator's predictions."""
    ev = cfg.dataloader.evaluator
    if primary or not ev.get("output_dir", None):
        return instantiate(ev)
    old = ev.output_dir
    ev.output_dir = None
    try:
        return instantiate(ev)
    finally:
        ev.output_dir = old


def _write_results(cfg, record: Dict) -> str:
    """Write ``record`` to train.output_dir/evaluation_results.json atomically."""
    out_dir = cfg.train.output_dir
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, RESULTS_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)
    return path


def do_test(cfg, model, checkpoint: Optional[str] = None,
            iteration: Optional[int] = None) -> Dict:
    """
    Run ``cfg.dataloader.test`` through ``cfg.dataloader.evaluator``; returns its results
    and writes them (with the score thresholds used, the checkpoint and the iteration)
    to ``train.output_dir/evaluation_results.json``.

    With ``train.adaptive_threshold.enabled``, the model's thresholds are first set from
    its prior, the network runs once at the lower of them and the fixed threshold, and
    the results hold AP at the adaptive threshold (``"bbox"``) and at the fixed one
    (``"bbox@0.05"``), printed side by side.
    """
    if "evaluator" not in cfg.dataloader:
        return {}
    loader = instantiate(cfg.dataloader.test)  # builds (and if needed generates) the data
    at = _adaptive_threshold_cfg(cfg)
    thresholds = {}
    if at is None:
        evaluator = instantiate(cfg.dataloader.evaluator)
        results = inference_on_dataset(model, loader, evaluator)
    else:
        evaluator = build_threshold_comparison(
            model, lambda primary: _instantiate_evaluator(cfg, primary),
            fixed=at.get("fixed", 0.05), rule=at.get("rule", None))
        with score_floor(model, evaluator.floor()):
            results = inference_on_dataset(model, loader, evaluator)
        thresholds = {name: {"label": evaluator.labels.get(name, name),
                             "values": [float(x) for x in t]}
                      for name, t in evaluator.thresholds.items()}
    if comm.is_main_process() and results:
        print_csv_format(results)
        path = _write_results(cfg, {
            "iteration": iteration,
            "checkpoint": checkpoint,
            "datasets": _test_dataset_names(cfg),
            "score_thresholds": thresholds,
            "results": results,
        })
        logger.info("evaluation results written to %s", path)
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
        # the iteration metrics.json files these results under
        last_results.update(do_test(cfg, model, iteration=trainer.storage.iter))
        return last_results

    at = _adaptive_threshold_cfg(cfg)
    if at is None:
        eval_hook = hooks.EvalHook(cfg.train.eval_period, test_and_remember)
    else:  # sets and logs the adaptive thresholds before every evaluation
        eval_hook = AdaptiveThresholdEvalHook(
            cfg.train.eval_period, test_and_remember, model, rule=at.get("rule", None),
            class_names=_class_names(cfg))

    trainer.register_hooks([
        # counts the data's foreground prior for Sampling-Free heads that carry none yet
        PriorInitHook(cfg, model),
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
        if comm.is_main_process() else None,
        eval_hook,
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
        ckpt = cfg.train.init_checkpoint
        if not ckpt:
            raise ValueError("--eval-only needs a checkpoint: add train.init_checkpoint=PATH")
        if "://" not in ckpt and not os.path.isfile(ckpt):
            raise FileNotFoundError(f"train.init_checkpoint={ckpt!r} does not exist")
        DetectionCheckpointer(model).load(ckpt)
        return do_test(cfg, model, checkpoint=ckpt)
    return do_train(cfg, model, resume=args.resume)
