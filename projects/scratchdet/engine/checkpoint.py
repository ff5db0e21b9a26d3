"""Crash-safe checkpoints for ``train_net.py`` and the demo.

:class:`AtomicCheckpointer` is Detectron2's :class:`DetectionCheckpointer` with three
guarantees that a killed or diverged run needs:

- a checkpoint (``<name>.pth``) and the ``last_checkpoint`` tag are written to a temporary
  file in the same directory, flushed, fsynced and then renamed over the final name
  (``os.replace``), so a process killed in the middle of a write leaves the previous files
  as they were and never a truncated file under a checkpoint's name;
- a model with non-finite weights or buffers is never saved: :meth:`save` raises
  ``FloatingPointError`` (naming the iteration, the tensors and the iteration's losses)
  and the last good checkpoint stays the last one on disk;
- ``resume_or_load(..., resume=True)`` skips a ``last_checkpoint`` that names a missing or
  unreadable file (with a warning) and resumes from the newest complete ``model_*.pth``.

:func:`check_output_dir` is the guard that keeps a new run from overwriting the
checkpoints of an earlier one. :func:`load_fitting_checkpoint` is the strict load of
evaluation, prediction and export: a checkpoint that leaves any of the model's parameters
or buffers at their initial values (another class count, another architecture) is refused,
where Detectron2 only logs a warning and goes on with random weights. Training from such
a checkpoint (fine-tuning) keeps Detectron2's lenient load
(:meth:`AtomicCheckpointer.resume_or_load`).
"""
import glob
import logging
import os
import zipfile
from typing import Any, Dict, FrozenSet, List, Optional

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.events import get_event_storage

from ..io import atomic_write

__all__ = ["AtomicCheckpointer", "atomic_write", "check_output_dir", "CheckpointMismatchError",
           "describe_mismatch", "existing_checkpoints", "is_complete_checkpoint",
           "load_fitting_checkpoint", "LAST_CHECKPOINT"]

LAST_CHECKPOINT = "last_checkpoint"  # the tag file Detectron2's Checkpointer resumes from

logger = logging.getLogger(__name__)


def is_complete_checkpoint(path: str) -> bool:
    """
    Whether ``path`` is a complete checkpoint file: torch's zip format with an intact
    central directory and CRCs (a truncated or partly written file fails), or for a
    legacy (non-zip) file, one that ``torch.load`` reads.
    """
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return False
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                return z.testzip() is None
        except (zipfile.BadZipFile, OSError, EOFError):
            return False
    try:
        torch.load(path, map_location="cpu", weights_only=False)
        return True
    except Exception:
        return False


def existing_checkpoints(output_dir: str) -> List[str]:
    """The checkpoint files (``*.pth`` and ``last_checkpoint``) in ``output_dir``, sorted."""
    if not output_dir or not os.path.isdir(output_dir):
        return []
    names = [n for n in os.listdir(output_dir)
             if n == LAST_CHECKPOINT or n.endswith(".pth")]
    return sorted(n for n in names if os.path.isfile(os.path.join(output_dir, n)))


def check_output_dir(output_dir: str, resume: bool = False, overwrite: bool = False) -> None:
    """
    Refuse to train into a directory that already holds checkpoints unless the caller
    resumes from them (``--resume``) or explicitly overwrites them (``--overwrite``).
    Raises ``FileExistsError`` naming the directory and the files; touches nothing.
    """
    if resume or overwrite:
        return
    found = existing_checkpoints(output_dir)
    if found:
        raise FileExistsError(
            f"output directory {output_dir!r} already holds checkpoints ({', '.join(found)}); "
            "pass --resume to continue from them or --overwrite to train again and "
            "replace them (or choose another train.output_dir)")


def _non_finite(state: Dict[str, Any]) -> List[str]:
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point()
            and not bool(torch.isfinite(v).all())]


def _current_losses() -> Dict[str, float]:
    """The losses recorded at the current iteration of the active EventStorage, if any."""
    try:
        storage = get_event_storage()
    except AssertionError:  # no EventStorage: not inside a training loop
        return {}
    return {k: v for k, (v, it) in sorted(storage.latest().items())
            if it == storage.iter and ("loss" in k)}


class AtomicCheckpointer(DetectionCheckpointer):
    """
    :class:`DetectionCheckpointer` whose writes are atomic, which refuses to save a model
    with non-finite tensors, and which resumes from the newest complete checkpoint when
    ``last_checkpoint`` names a missing or unreadable file (see the module docstring).
    After :meth:`resume_or_load`, :attr:`resumed_from` is the checkpoint resumed from
    (``None`` when the run starts afresh). After any load, :attr:`loaded_from` is the file
    read (``None`` when there was none) and :attr:`unloaded_keys` the keys of the model's
    state that it left as they were: absent from the file or of another shape there
    (Detectron2 logs both and skips them), and :attr:`incompatible` the full report of
    the load (fvcore's ``_IncompatibleKeys``: ``missing_keys``, ``unexpected_keys``,
    ``incorrect_shapes``; ``None`` before a load). A Sampling-Free run reads
    :attr:`unloaded_keys` to tell which heads' classification bias came from the
    checkpoint (:class:`~scratchdet.sampling_free.PriorInitHook`);
    :func:`load_fitting_checkpoint` refuses a checkpoint from :attr:`incompatible`.
    """

    resumed_from: Optional[str] = None
    loaded_from: Optional[str] = None
    unloaded_keys: FrozenSet[str] = frozenset()
    incompatible: Any = None

    def save(self, name: str, **kwargs: Any) -> None:
        """Like :meth:`Checkpointer.save`, but atomic, and it raises ``FloatingPointError``
        instead of saving a model with NaN/inf weights or buffers."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        bad = _non_finite(data["model"])
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if bad:
            losses = ", ".join(f"{k}={v:.6g}" for k, v in _current_losses().items())
            last = self.get_checkpoint_file() if self.has_checkpoint() else ""
            raise FloatingPointError(
                f"iteration {kwargs.get('iteration', '?')}: the model has non-finite "
                f"values in {len(bad)} tensor(s) ({', '.join(bad[:5])}"
                f"{', ...' if len(bad) > 5 else ''}) after the optimizer step; losses at "
                f"this iteration: {losses or 'not recorded'}. Not saving {save_file}; the "
                f"last checkpoint on disk stays {last or 'none'}. Lower the learning rate "
                "or enable gradient clipping.")
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        assert os.path.basename(save_file) == basename, basename
        self.logger.info("Saving checkpoint to {}".format(save_file))
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Write ``last_checkpoint`` atomically."""
        atomic_write(os.path.join(self.save_dir, LAST_CHECKPOINT),
                     lambda f: f.write(last_filename_basename), mode="w")

    def _newest_complete(self, exclude: str = "") -> str:
        """The newest (by modification time) complete ``model_*.pth`` in save_dir."""
        files = [f for f in glob.glob(os.path.join(self.save_dir, "model_*.pth"))
                 if not exclude or os.path.abspath(f) != os.path.abspath(exclude)]
        for f in sorted(files, key=lambda f: (os.path.getmtime(f), f), reverse=True):
            if is_complete_checkpoint(f):
                return f
            logger.warning("skipping incomplete or unreadable checkpoint %s", f)
        return ""

    def resumable_checkpoint(self) -> str:
        """
        The checkpoint ``--resume`` continues from: the file ``last_checkpoint`` names when
        it is complete, else (with a warning) the newest complete ``model_*.pth``; ``""``
        when there is none.
        """
        if not self.save_dir:
            return ""
        tagged = self.get_checkpoint_file() if self.has_checkpoint() else ""
        if tagged and is_complete_checkpoint(tagged):
            return tagged
        fallback = self._newest_complete(exclude=tagged)
        if tagged:
            why = "does not exist" if not os.path.exists(tagged) else \
                "is incomplete or unreadable (a write interrupted?)"
            logger.warning(
                "%s names %s, which %s; resuming from %s instead",
                os.path.join(self.save_dir, LAST_CHECKPOINT), tagged, why,
                fallback or "nothing (training starts afresh)")
        elif fallback:
            logger.warning("no %s in %s; resuming from the newest complete checkpoint %s",
                           LAST_CHECKPOINT, self.save_dir, fallback)
        return fallback

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """:meth:`Checkpointer.load`, recording :attr:`loaded_from` and
        :attr:`unloaded_keys`."""
        self.loaded_from, self.unloaded_keys, self.incompatible = None, frozenset(), None
        out = super().load(path, checkpointables=checkpointables)
        if path:
            self.loaded_from = path
        return out

    def _load_model(self, checkpoint: Any):
        incompatible = super()._load_model(checkpoint)
        self.incompatible = incompatible
        if incompatible is not None:
            self.unloaded_keys = frozenset(incompatible.missing_keys) | frozenset(
                k for k, _, _ in incompatible.incorrect_shapes)
        return incompatible

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """
        With ``resume``, load the model and all checkpointables (trainer: iteration,
        optimizer, scheduler) from :meth:`resumable_checkpoint`; otherwise (or when there
        is nothing to resume from) only the model weights from ``path``.
        """
        self.resumed_from = None
        if resume:
            ckpt = self.resumable_checkpoint()
            if ckpt:
                self.resumed_from = ckpt
                return self.load(ckpt)
        return self.load(path, checkpointables=[])


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model built from a config (see
    :func:`load_fitting_checkpoint`)."""


def _listing(items: List[str], limit: int) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def describe_mismatch(incompatible, limit: int = 10) -> str:
    """
    What a load (fvcore's ``_IncompatibleKeys``, as Detectron2's checkpointer reports it)
    left unloaded: the parameters and buffers whose shapes differ (checkpoint vs model)
    and those missing from the checkpoint, at most ``limit`` names of each; ``""`` when
    every one of them loaded. Detectron2 already drops the keys it fills itself
    (``pixel_mean``/``pixel_std``, set from the config) from ``missing_keys``. Keys only
    the checkpoint has are not a mismatch (the model does not use them).
    """
    if incompatible is None:
        return ""
    shapes = [f"{k} {tuple(c)} vs {tuple(m)}" for k, c, m in incompatible.incorrect_shapes]
    reshaped = {k for k, _, _ in incompatible.incorrect_shapes}
    missing = [k for k in incompatible.missing_keys if k not in reshaped]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} of another shape (checkpoint vs model): "
                     f"{_listing(shapes, limit)}")
    if missing:
        parts.append(f"{len(missing)} missing from the checkpoint: {_listing(missing, limit)}")
    return "; ".join(parts)


def load_fitting_checkpoint(model: torch.nn.Module, path: str) -> Dict[str, Any]:
    """
    Load the weights ``path`` into ``model`` with Detectron2's checkpointer (``.pth``
    files of ``train_net.py``, Detectron2 ``.pkl`` files, URLs) and raise
    :class:`CheckpointMismatchError` naming the parameters and buffers that did not load
    (:func:`describe_mismatch`) unless every one of them came from the checkpoint. For
    evaluation, prediction and export: a model left partly at its random initialisation
    must not produce results. ``model`` is partly loaded when it raises; discard it.
    Returns the checkpoint's other contents, as ``Checkpointer.load`` does.
    """
    if not path:  # Checkpointer.load would leave the model at its random initialisation
        raise ValueError("no checkpoint given: evaluation, prediction and export need the "
                         "weights of a trained model")
    checkpointer = AtomicCheckpointer(model)
    extra = checkpointer.load(path, checkpointables=[])
    problem = describe_mismatch(checkpointer.incompatible)
    if problem:
        unexpected = getattr(checkpointer.incompatible, "unexpected_keys", [])
        extra_keys = (f" The checkpoint also has {len(unexpected)} keys the model lacks: "
                      f"{_listing(unexpected, 10)}.") if unexpected else ""
        raise CheckpointMismatchError(
            f"checkpoint {path!r} does not fit the model built from the config: "
            f"{problem}.{extra_keys} Is it a checkpoint of this config (the same "
            "architecture and number of classes)? To fine-tune from it, train with it as "
            "train.init_checkpoint / MODEL.WEIGHTS instead.")
    return extra
