"""do_train's options for callers with their own needs (experiments/, benchmarks/): hooks
after PriorInitHook and at the end, an early stop asked for after an iteration, a seeded
sampler, and training without checkpoints, evaluation or writers."""
import os

import pytest
import torch

from detectron2.engine import HookBase, hooks
from detectron2.utils.env import seed_all_rng

from scratchdet.engine import build_model, do_train, load_config
from scratchdet.sampling_free import PriorInitHook

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "shapes", "scratchdet_root_resnet18_fpn_demo.py")


def _cfg(out, max_iter):
    cfg = load_config(DEMO, [
        f"train.output_dir={out}", f"train.max_iter={max_iter}", "train.device=cpu",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.dataset.names=scratchdet_shapes_val"])
    del cfg.dataloader.evaluator  # do_test returns {} at once
    return cfg


class _Log(HookBase):
    """Records the iterations it sees and what the trainer says at ``after_train``."""

    def __init__(self):
        self.steps, self.losses, self.end = [], [], None

    def after_step(self):
        self.steps.append(self.trainer.iter)
        self.losses.append(self.trainer.storage.latest()["total_loss"][0])

    def after_train(self):
        self.end = (self.trainer.iter, self.trainer.max_iter)


def test_stop_when_ends_training_after_the_iteration_asked_with_the_hooks_in_place(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(tmp_path / "run", max_iter=10)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    extra, end, asked, order = _Log(), _Log(), [], []

    def stop(trainer):
        asked.append(trainer.iter)
        if not order:
            order.extend(type(h) for h in trainer._hooks)
        return trainer.iter == 2

    out = do_train(cfg, model, extra_hooks=[extra], end_hooks=[end], stop_when=stop,
                   outputs=False)
    assert out is None  # no evaluation ran
    assert asked == [0, 1, 2] and end.steps == [0, 1, 2] and extra.steps == [0, 1, 2]
    # the hooks' after_train saw a run that finished after three iterations
    assert end.end == (3, 3) and extra.end == (3, 3)
    assert order == [PriorInitHook, _Log, hooks.IterationTimer, hooks.LRScheduler, _Log]
    assert all(v == v for v in end.losses)  # finite
    # the model passed in is the one trained: its weights moved, its BN statistics too
    after = model.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.endswith(".weight") for k in moved), moved
    assert any(k.endswith("running_mean") for k in moved), moved
    # outputs=False: nothing written to train.output_dir
    run = tmp_path / "run"
    assert not run.exists() or not any(run.iterdir()), list(run.iterdir())


def test_stop_with_outputs_runs_the_writers_after_train(tmp_path):
    cfg = _cfg(tmp_path, max_iter=6)
    cfg.train.log_period = 100
    cfg.train.checkpointer = dict(period=100, max_to_keep=1)
    do_train(cfg, build_model(cfg), stop_when=lambda trainer: trainer.iter == 1)
    with open(tmp_path / "metrics.json") as f:
        lines = [line for line in f if line.strip()]
    # the writers flush in after_train: the record of the last iteration run (index 1)
    assert lines and '"iteration": 1' in lines[-1], lines


def test_sampler_seed_and_reseed_hook_make_the_run_repeatable(tmp_path):
    losses = []
    for run in range(2):
        cfg = _cfg(tmp_path / str(run), max_iter=2)
        torch.manual_seed(0)
        model = build_model(cfg)
        log = _Log()
        seed_all_rng(100 + run)  # other generator states before training: the hook reseeds
        do_train(cfg, model, sampler_seed=7, outputs=False, end_hooks=[log], extra_hooks=[
            hooks.CallbackHook(before_train=lambda _: seed_all_rng(3))])
        assert cfg.dataloader.train.sampler.seed == 7
        losses.append(log.losses)
    assert len(losses[0]) == 2 and losses[0] == losses[1], losses


def test_a_non_finite_loss_raises_before_stop_when_is_asked(tmp_path):
    cfg = _cfg(tmp_path, max_iter=5)
    model = build_model(cfg)
    asked = []

    def poison(trainer):
        if trainer.iter == 1:
            with torch.no_grad():
                next(model.head.parameters()).fill_(float("nan"))

    with pytest.raises(FloatingPointError, match="non-finite at iteration 1"):
        do_train(cfg, model, outputs=False, stop_when=lambda t: asked.append(t.iter),
                 extra_hooks=[hooks.CallbackHook(before_step=poison)])
    assert asked == [0]
