"""The LazyConfig training and evaluation loop behind ``train_net.py``.

It follows Detectron2's ``tools/lazyconfig_train_net.py`` (SimpleTrainer/AMPTrainer,
LR scheduler, periodic checkpointer, evaluation hook, console/JSON/TensorBoard writers,
``launch`` for several processes) with what from-scratch training on any machine needs:
datasets registered from the config, CPU multi-process training over GLOO, and the final
evaluation results returned to the caller.
"""
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence

import torch

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    create_ddp_model,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.data import MetadataCatalog
from detectron2.data.samplers import TrainingSampler
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data import register_datasets_from_config
from ..io import write_json_atomic
from ..evaluation import AdaptiveThresholdEvalHook, build_threshold_comparison, score_floor
from ..sampling_free import PriorInitHook
from .checkpoint import AtomicCheckpointer, check_output_dir, load_fitting_checkpoint
from .overrides import ConfigOverrideError, apply_overrides
from .trainers import GuardedAMPTrainer, GuardedSimpleTrainer

__all__ = ["load_config", "apply_overrides", "build_model", "do_test", "do_train",
           "ConfigOverrideError", "RESULTS_FILE", "setup_run", "eval_checkpoint"]

RESULTS_FILE = "evaluation_results.json"  # in train.output_dir: the last evaluation

logger = logging.getLogger("scratchdet")


def load_config(config_file: str, overrides=()):
    """
    ``LazyConfig.load`` + :func:`apply_overrides` (strict: unknown keys and values of the
    wrong type are errors); registers the config's ``datasets`` entries.
    """
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    cfg = LazyConfig.load(config_file)
    cfg = apply_overrides(cfg, list(overrides), config_file=config_file)
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
    return write_json_atomic(os.path.join(cfg.train.output_dir, RESULTS_FILE), record, indent=2)


def _sync_buffers(model) -> None:
    """With several processes, give every process rank 0's buffers (BatchNorm running
    statistics, the prior): DDP here does not broadcast buffers (``train.ddp``), so each
    process's BN statistics follow its own images, while checkpoints hold rank 0's. A
    distributed evaluation then scores exactly the model the checkpoint holds."""
    if comm.get_world_size() == 1:
        return
    with torch.no_grad():
        for b in model.buffers():
            torch.distributed.broadcast(b, src=0)


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
    _sync_buffers(model)
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


def _log_resume(checkpointer, trainer, optim, model) -> None:
    """What ``--resume`` restored, for the log (and for the person reading it)."""
    sched = trainer.state_dict().get("hooks", {}).get("LRScheduler", {})
    prior = {k: float(v) for k, v in model.state_dict().items()
             if k.endswith("prior_state.prior") and v.numel() == 1}
    logger.info(
        "resumed from %s: iteration %d, optimizer state for %d parameters, lr %s, "
        "scheduler %s, prior %s", checkpointer.resumed_from, trainer.iter,
        len(optim.state_dict()["state"]), [g["lr"] for g in optim.param_groups][:1],
        sched or "rebuilt from the iteration", prior or "none")


def _output_hooks(cfg, model, trainer, checkpointer, last_results: Dict) -> List:
    """The periodic checkpointer, the evaluation hook (which keeps its results in
    ``last_results``) and the writers of a ``train_net.py`` run."""

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
    return [
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
        if comm.is_main_process() else None,
        eval_hook,
        hooks.PeriodicWriter(
            default_writers(cfg.train.output_dir, cfg.train.max_iter),
            period=cfg.train.log_period,
        ) if comm.is_main_process() else None,
    ]


def do_train(cfg, model, resume: bool = False, *, extra_hooks: Sequence = (),
             end_hooks: Sequence = (), stop_when: Optional[Callable] = None,
             sampler_seed: Optional[int] = None, outputs: bool = True) -> Optional[Dict]:
    """
    Train ``model`` (in place) as ``cfg.train`` says; returns the last evaluation's results
    (``None`` when no evaluation ran).

    Checkpoints are written atomically (:class:`AtomicCheckpointer`), never of a model with
    non-finite weights; with ``resume`` training continues from the newest complete
    checkpoint in ``train.output_dir`` (iteration, optimizer, LR scheduler, model buffers
    such as a Sampling-Free prior). A non-finite loss raises ``FloatingPointError``.

    The hooks, in order: ``PriorInitHook``, ``extra_hooks`` (e.g. one that resets the bias
    the prior set, or reseeds the generators before the first iteration),
    ``IterationTimer``, ``LRScheduler`` (``cfg.lr_multiplier``), with ``outputs`` the
    periodic checkpointer, the evaluation hook and the writers, then ``end_hooks`` (e.g.
    one that reads what each iteration logged). ``outputs=False`` trains without those
    three: nothing is evaluated or written to ``train.output_dir``, the caller evaluates
    and saves ``model`` as it wants.

    ``stop_when(trainer) -> bool`` is asked after every iteration; True ends training
    there (:class:`~scratchdet.engine.trainers.GuardedSimpleTrainer`). ``sampler_seed``
    makes the train loader's ``TrainingSampler`` shuffle with that seed (it sets
    ``cfg.dataloader.train.sampler``), so the order of the images depends on it alone.
    """
    model.train()
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    if sampler_seed is not None:
        size = len(instantiate(cfg.dataloader.train.dataset))
        cfg.dataloader.train.sampler = L(TrainingSampler)(size=size, shuffle=True,
                                                          seed=int(sampler_seed))
    train_loader = instantiate(cfg.dataloader.train)

    ddp_kwargs = dict(cfg.train.ddp)
    if _device(cfg) == "cpu":
        ddp_kwargs["device_ids"] = None  # CPU processes (GLOO): no device ids
    model = create_ddp_model(model, **ddp_kwargs)
    trainer_cls = GuardedAMPTrainer if cfg.train.amp.enabled else GuardedSimpleTrainer
    trainer = trainer_cls(model, train_loader, optim)
    trainer.stop_when = stop_when
    checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    last_results = {}
    trainer.register_hooks(
        # Sampling-Free heads: keeps the priors of a resumed checkpoint, counts this run's
        # data otherwise (reading from the checkpointer which biases init_checkpoint set)
        [PriorInitHook(cfg, model, checkpointer), *extra_hooks,
         hooks.IterationTimer(), hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier))]
        + (_output_hooks(cfg, model, trainer, checkpointer, last_results) if outputs else [])
        + list(end_hooks))
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    if checkpointer.resumed_from:
        start_iter = trainer.iter + 1
        _log_resume(checkpointer, trainer, optim, model)
    else:
        start_iter = 0
    trainer.train(start_iter, cfg.train.max_iter)
    return dict(last_results) if last_results else None


def setup_run(cfg, args, output_dir: str) -> None:
    """
    What a ``train_net.py`` run does before building anything (LazyConfig or yacs):
    refuse an output directory holding checkpoints unless ``--resume``/``--overwrite``
    (:func:`check_output_dir`; not for ``--eval-only``), Detectron2's ``default_setup``,
    the "scratchdet" log in ``output_dir``, and the machine's cores shared among the
    local processes unless ``OMP_NUM_THREADS`` says otherwise.
    """
    if not args.eval_only:
        check_output_dir(output_dir, resume=args.resume,
                         overwrite=getattr(args, "overwrite", False))
    default_setup(cfg, args)
    setup_logger(output_dir, distributed_rank=comm.get_rank(), name="scratchdet")
    if not os.environ.get("OMP_NUM_THREADS"):  # the user's setting wins
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, comm.get_local_size())))


def eval_checkpoint(path: str, key: str) -> str:
    """``path``, the checkpoint ``--eval-only`` evaluates (config key ``key``): it must be
    given, and exist unless it is a URL."""
    if not path:
        raise ValueError(f"--eval-only needs a checkpoint: add {key}PATH")
    if "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"{key}{path!r} does not exist")
    return path


def main(args):
    """
    Entry point used by ``train_net.py`` (runs in every launched process). Before anything
    is written, the overrides are checked (:func:`load_config`) and a training run refuses
    an output directory that holds checkpoints unless ``args.resume`` or
    ``args.overwrite`` (:func:`check_output_dir`). ``--eval-only`` refuses a checkpoint
    that does not fit the model (:func:`load_fitting_checkpoint`).
    """
    cfg = load_config(args.config_file, args.opts)
    setup_run(cfg, args, cfg.train.output_dir)
    model = build_model(cfg)
    logger.info("Model:\n{}".format(model))
    if args.eval_only:
        ckpt = eval_checkpoint(cfg.train.init_checkpoint, "train.init_checkpoint=")
        load_fitting_checkpoint(model, ckpt)  # refuses one of another class count / model
        return do_test(cfg, model, checkpoint=ckpt)
    return do_train(cfg, model, resume=args.resume)
