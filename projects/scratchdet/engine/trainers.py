"""Detectron2's ``SimpleTrainer`` and ``AMPTrainer`` as :func:`scratchdet.engine.do_train`
runs them: a non-finite loss stops training before the optimizer step, no evaluation
after a failed iteration, and an early stop that a caller may ask for after any
iteration."""
import logging
from typing import Callable, Optional

import torch

from detectron2.engine import AMPTrainer, SimpleTrainer, hooks

__all__ = ["GuardedSimpleTrainer", "GuardedAMPTrainer"]

logger = logging.getLogger("scratchdet")


class _StopTraining(BaseException):
    """Ends the training loop after an iteration for which ``stop_when`` answered True.
    A BaseException, not an Exception: Detectron2's ``TrainerBase.train`` logs every
    Exception as a failure of training, and this is no failure; the trainer's own
    ``train`` catches it."""


class _GuardedTrainerMixin:
    """
    What a diverged run, and a run that stops early, need from Detectron2's trainers:

    - a non-finite loss stops training with ``FloatingPointError`` naming the iteration
      and the value of every loss term, checked on every iteration and every process
      before the optimizer step (Detectron2 checks the averaged losses on the main process
      only, every ``gather_metric_period`` iterations);
    - after a failed iteration no hook evaluates the model: Detectron2's ``EvalHook``
      evaluates in ``after_train`` also when the *last* iteration failed;
    - ``stop_when(trainer) -> bool``, when set, is asked after every iteration, once all
      hooks' ``after_step`` ran; True ends training there as if ``max_iter`` were the
      iterations run: ``trainer.iter`` and ``trainer.max_iter`` become that count, every
      hook's ``after_train`` runs (an ``EvalHook`` evaluates) and ``train`` returns
      normally. A ``PeriodicCheckpointer`` hook writes its final checkpoint only at the
      ``max_iter`` training started with. With several processes ``stop_when`` must give
      the same answer on every process.
    """

    stop_when: Optional[Callable[[object], bool]] = None

    def _write_metrics(self, loss_dict, data_time: float, prefix: str = "", iter=None):
        it = self.iter if iter is None else iter
        values = torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()]) \
            if loss_dict else None
        if values is not None and not bool(torch.isfinite(values).all()):
            terms = ", ".join(f"{k}={float(v):.6g}" for k, v in zip(loss_dict, values.cpu()))
            raise FloatingPointError(
                f"loss became non-finite at iteration {it}: {terms} (total "
                f"{float(values.sum()):.6g}); training stopped before this iteration's "
                "optimizer step, no checkpoint is written after it")
        super()._write_metrics(loss_dict, data_time, prefix, iter)

    def after_step(self):
        super().after_step()
        if self.stop_when is not None and self.stop_when(self):
            self.iter += 1  # as TrainerBase.train leaves it after its last iteration
            self.max_iter = self.iter
            raise _StopTraining()

    def train(self, start_iter: int, max_iter: int):
        try:
            super().train(start_iter, max_iter)
        except _StopTraining:
            logger.info("stop_when ended training after %d iterations (max_iter was %d)",
                        self.iter - start_iter, max_iter)

    def after_train(self):
        if self.iter >= self.max_iter:  # TrainerBase.train: the loop ran to its end
            return super().after_train()
        self.storage.iter = self.iter
        for h in self._hooks:
            if not isinstance(h, hooks.EvalHook):
                h.after_train()


class GuardedSimpleTrainer(_GuardedTrainerMixin, SimpleTrainer):
    """:class:`SimpleTrainer` with the non-finite loss check and ``stop_when`` (see
    _GuardedTrainerMixin)."""


class GuardedAMPTrainer(_GuardedTrainerMixin, AMPTrainer):
    """:class:`AMPTrainer` with the non-finite loss check and ``stop_when`` (see
    _GuardedTrainerMixin)."""
