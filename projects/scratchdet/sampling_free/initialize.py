"""Counting the priors of a model's Sampling-Free heads before training starts."""
import logging
from typing import Dict

from detectron2.config import instantiate
from detectron2.engine import HookBase
from detectron2.utils import comm

from .prior import AnchorCounter, PriorCounts, load_or_count, prior_fingerprint

__all__ = ["prior_heads", "initialize_priors", "PriorInitHook", "estimate_priors"]

logger = logging.getLogger("scratchdet")


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def prior_heads(model):
    """Every (name, anchor generator, matcher, C, owner) of the model's prior heads."""
    heads = []
    for m in _unwrap(model).modules():
        if hasattr(m, "prior_heads") and hasattr(m, "set_prior"):
            heads.extend(m.prior_heads())
    return heads


def _prior_inputs(cfg, model, dataset_dicts=None):
    """(dataset names, dataset dicts, mapper augmentations, {head: AnchorCounter}) of
    ``cfg``'s training data and ``model``'s prior heads."""
    dl = cfg.dataloader.train
    names = dl.dataset.names
    dicts = instantiate(dl.dataset) if dataset_dicts is None else dataset_dicts
    augs = list(instantiate(dl.mapper.augmentations)) if "augmentations" in dl.mapper else []
    size_div = getattr(_unwrap(model).backbone, "size_divisibility", 0)
    num_classes = _num_classes(model)
    counters = {name: (AnchorCounter(anchor_generator, matcher, num_classes, size_div),
                       head_classes)
                for name, anchor_generator, matcher, head_classes, _ in prior_heads(model)}
    return names, dicts, augs, counters


def estimate_priors(cfg, model, dataset_dicts=None, use_cache=True, progress=True,
                    extra=None) -> Dict[str, PriorCounts]:
    """Count every prior head of ``model`` on ``cfg``'s training data (no images read).
    ``dataset_dicts`` replaces the loader's dataset (e.g. a sample of it)."""
    names, dicts, augs, counters = _prior_inputs(cfg, model, dataset_dicts)
    out = {}
    for name, (counter, head_classes) in counters.items():
        counts, cached = load_or_count(names, dicts, counter, augs, head_classes, use_cache,
                                       progress, extra)
        logger.info("prior[%s] = %.4g (stderr %.2g) from %d images, %d of %d anchors foreground%s",
                    name, counts.prior, counts.stderr, counts.num_images, counts.num_foreground,
                    counts.num_valid, " (cached)" if cached else f", counted in {counts.seconds:.1f}s")
        out[name] = counts
    return out


def _num_classes(model) -> int:
    m = _unwrap(model)
    if hasattr(m, "num_classes"):
        return int(m.num_classes)
    return int(m.roi_heads.num_classes)


def _report_kept_priors(cfg, model, dataset_dicts=None, extra=None, **_) -> None:
    """Log, for every head whose prior came with the model (a checkpoint), whether it was
    counted on the data ``cfg`` trains on: a WARNING naming the datasets, both data
    fingerprints and the kept prior when they differ; INFO when they match or the
    checkpoint stores no fingerprint. Computing the fingerprints reads the annotations
    but counts nothing."""
    heads = [h for h in prior_heads(model) if h[4].prior_state.is_set]
    if not heads or not comm.is_main_process():
        return
    try:
        names, dicts, augs, counters = _prior_inputs(cfg, model, dataset_dicts)
    except Exception as e:  # the message is a courtesy: never fail training for it
        logger.warning("could not check the checkpoint's priors against the data (%s: %s); "
                       "keeping them", type(e).__name__, e)
        return
    for name, _, _, _, owner in heads:
        state = owner.prior_state
        counter, head_classes = counters[name]
        current = prior_fingerprint(names, dicts, counter, augs, head_classes, extra)
        stored = state.fingerprint
        if not stored:
            logger.info("prior[%s] = %.4g kept from the checkpoint, which does not record the "
                        "data it was counted on; the data now is %s (fingerprint %s)", name,
                        float(state.prior), names, current)
        elif stored != current:
            logger.warning(
                "prior[%s] = %.4g kept from the checkpoint, counted on other data or settings "
                "(fingerprint %s) than this run's %s (fingerprint %s): the bias and adaptive "
                "thresholds are the checkpoint's. To count them for this data, call "
                "initialize_priors(cfg, model, force=True).",
                name, float(state.prior), stored, names, current)
        else:
            logger.info("prior[%s] = %.4g kept from the checkpoint (same data, fingerprint %s)",
                        name, float(state.prior), current)


def initialize_priors(cfg, model, force=False, **kwargs) -> Dict[str, PriorCounts]:
    """Set the prior (bias, thresholds) of every head that has none yet (or all: force).
    A prior a head already has (loaded from a checkpoint) is kept, and a message says
    whether it was counted on this data (see :func:`_report_kept_priors`)."""
    heads = prior_heads(model)
    if not heads:
        return {}
    if not force:
        _report_kept_priors(cfg, model, **kwargs)
        if all(h[4].prior_state.is_set for h in heads):
            return {}
    counts = estimate_priors(cfg, model, **kwargs)
    for name, _, _, _, owner in heads:
        if force or not owner.prior_state.is_set:
            owner.set_prior(counts[name])
    return counts


class PriorInitHook(HookBase):
    """Before the first iteration: count and set the priors the model does not carry yet
    (a resumed checkpoint carries them, so a resume does not recount or reset the bias)."""

    def __init__(self, cfg, model):
        self.cfg, self.model = cfg, model

    def before_train(self):
        counts = initialize_priors(self.cfg, self.model)
        storage = self.trainer.storage
        for h in prior_heads(self.model):
            name, owner = h[0], h[4]
            storage.put_scalar(f"prior/{name}", float(owner.prior_state.prior), smoothing_hint=False)
        if counts and comm.is_main_process():
            logger.info("priors set: %s", {k: round(v.prior, 8) for k, v in counts.items()})
