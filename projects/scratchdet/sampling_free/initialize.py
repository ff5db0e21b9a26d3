"""Counting the priors of a model's Sampling-Free heads before training starts."""
import logging
from typing import Dict

from detectron2.config import instantiate
from detectron2.engine import HookBase
from detectron2.utils import comm

from .prior import AnchorCounter, PriorCounts, load_or_count

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


def estimate_priors(cfg, model, dataset_dicts=None, use_cache=True, progress=True,
                    extra=None) -> Dict[str, PriorCounts]:
    """Count every prior head of ``model`` on ``cfg``'s training data (no images read).
    ``dataset_dicts`` replaces the loader's dataset (e.g. a sample of it)."""
    dl = cfg.dataloader.train
    names = dl.dataset.names
    dicts = instantiate(dl.dataset) if dataset_dicts is None else dataset_dicts
    augs = list(instantiate(dl.mapper.augmentations)) if "augmentations" in dl.mapper else []
    size_div = getattr(_unwrap(model).backbone, "size_divisibility", 0)
    num_classes = _num_classes(model)
    out = {}
    for name, anchor_generator, matcher, head_classes, _ in prior_heads(model):
        counter = AnchorCounter(anchor_generator, matcher, num_classes, size_div)
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


def initialize_priors(cfg, model, force=False, **kwargs) -> Dict[str, PriorCounts]:
    """Set the prior (bias, thresholds) of every head that has none yet (or all: force)."""
    heads = prior_heads(model)
    if not heads or (not force and all(h[4].prior_state.is_set for h in heads)):
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
