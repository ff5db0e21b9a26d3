"""Counting the priors of a model's Sampling-Free heads before training starts, for a
LazyConfig (``dataloader.train``) or a yacs config (``DATASETS.TRAIN``)."""
import logging
from typing import Dict, List, Sequence

import detectron2.data.transforms as T
from detectron2.config import CfgNode, instantiate
from detectron2.data import DatasetMapper, get_detection_dataset_dicts
from detectron2.engine import HookBase
from detectron2.utils import comm

from .prior import AnchorCounter, PriorCounts, load_or_count, prior_fingerprint
from .prior_state import bias_from_prior

__all__ = ["prior_heads", "initialize_priors", "initialize_priors_from_checkpoint",
           "PriorInitHook", "estimate_priors"]

logger = logging.getLogger("scratchdet")


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def prior_heads(model):
    """Every (name, anchor generator, matcher or rule, C, owner) of the model's prior heads:
    an IoU :class:`Matcher`, or a rule object with ``make_counter`` (FCOS's points)."""
    heads = []
    for m in _unwrap(model).modules():
        if hasattr(m, "prior_heads") and hasattr(m, "set_prior"):
            heads.extend(m.prior_heads())
    return heads


def _without_noop_resize(augs: Sequence, where: str) -> List:
    """``augs`` without a ``ResizeShortestEdge`` whose every short side is 0: Detectron2
    applies no resize for 0 (yacs configs write ``INPUT.MIN_SIZE_TRAIN: (0,)`` for "no
    resize"), so such a config counts, and fingerprints, as one without the resize. A
    mix of 0 and sizes is refused: the counter models resizes, not their absence."""
    out = []
    for a in augs:
        if isinstance(a, T.ResizeShortestEdge) and 0 in [int(x) for x in a.short_edge_length]:
            if any(int(x) for x in a.short_edge_length):
                raise ValueError(
                    f"{where}: the training resize {a} mixes short side 0 (no resize) with "
                    "other sizes; the prior counter cannot model that. Use sizes > 0, or "
                    "only 0 for no resize.")
            continue
        out.append(a)
    return out


def _training_data(cfg, dataset_dicts=None):
    """(dataset names, dataset dicts, mapper augmentations) of what ``cfg`` trains on: a
    LazyConfig's ``dataloader.train``, or for a yacs config what Detectron2's
    ``DefaultTrainer`` loads: ``DATASETS.TRAIN`` through ``get_detection_dataset_dicts``
    and ``DatasetMapper(cfg, True)``'s augmentations (``build_augmentation(cfg, True)``,
    and the crop when ``INPUT.CROP.ENABLED``)."""
    if isinstance(cfg, CfgNode):
        names = list(cfg.DATASETS.TRAIN)
        if dataset_dicts is None:  # as detectron2.data.build_detection_train_loader(cfg)
            dataset_dicts = get_detection_dataset_dicts(
                names, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
                min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
                if cfg.MODEL.KEYPOINT_ON else 0,
                proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS
                else None)
        augs = DatasetMapper.from_config(cfg, is_train=True)["augmentations"]
        return names, dataset_dicts, _without_noop_resize(augs, "INPUT.MIN_SIZE_TRAIN")
    dl = cfg.dataloader.train
    dicts = instantiate(dl.dataset) if dataset_dicts is None else dataset_dicts
    augs = list(instantiate(dl.mapper.augmentations)) if "augmentations" in dl.mapper else []
    return dl.dataset.names, dicts, _without_noop_resize(augs, "dataloader.train.mapper")


def _prior_inputs(cfg, model, dataset_dicts=None):
    """(dataset names, dataset dicts, mapper augmentations, {head: (counter, C)}) of
    ``cfg``'s training data and ``model``'s prior heads."""
    names, dicts, augs = _training_data(cfg, dataset_dicts)
    size_div = getattr(_unwrap(model).backbone, "size_divisibility", 0)
    num_classes = _num_classes(model)
    counters = {name: (_counter(anchor_generator, rule, num_classes, size_div), head_classes)
                for name, anchor_generator, rule, head_classes, _ in prior_heads(model)}
    return names, dicts, augs, counters


def _counter(anchor_generator, rule, num_classes: int, size_div: int):
    """A head's counter: its assignment rule's own (``rule.make_counter``, e.g. FCOS's
    point rule), else an :class:`AnchorCounter` of its IoU matcher."""
    if hasattr(rule, "make_counter"):
        return rule.make_counter(anchor_generator, num_classes, size_div)
    return AnchorCounter(anchor_generator, rule, num_classes, size_div)


def estimate_priors(cfg, model, dataset_dicts=None, use_cache=True, progress=True,
                    extra=None) -> Dict[str, PriorCounts]:
    """Count every prior head of ``model`` on ``cfg``'s training data (no images read);
    ``cfg`` is a LazyConfig or a yacs config. ``dataset_dicts`` replaces the loader's
    dataset (e.g. a sample of it)."""
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
                "thresholds are the checkpoint's. To count them for this data, start a "
                "new run from the checkpoint (train.init_checkpoint / MODEL.WEIGHTS, "
                "without --resume) or call initialize_priors(cfg, model, force=True).",
                name, float(state.prior), stored, names, current)
        else:
            logger.info("prior[%s] = %.4g kept from the checkpoint (same data, fingerprint %s)",
                        name, float(state.prior), current)


def initialize_priors(cfg, model, force=False, keep_bias=(), **kwargs) -> Dict[str, PriorCounts]:
    """Set the prior (bias, thresholds) of every head that has none yet, or with ``force``
    of every head. A prior a head already has (loaded from a checkpoint) is otherwise
    kept, and a message says whether it was counted on this data (see
    :func:`_report_kept_priors`). Heads named in ``keep_bias`` get the counted prior and
    thresholds but keep their classification bias (one loaded from a checkpoint)."""
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
            owner.set_prior(counts[name], set_bias=name not in keep_bias)
    return counts


def _state_names(model) -> Dict[int, str]:
    m = _unwrap(model)
    return {id(t): n for n, t in list(m.named_parameters()) + list(m.named_buffers())}


def _loaded_bias_heads(model, unloaded_keys) -> List[str]:
    """The prior heads whose every classification bias tensor a checkpoint load filled
    (its key is not among ``unloaded_keys``: absent, or of another shape, in the file)."""
    names = _state_names(model)
    return [name for name, _, _, _, owner in prior_heads(model)
            if not any(names.get(id(b)) in unloaded_keys for b in owner.prior_bias_params())]


def initialize_priors_from_checkpoint(cfg, model, checkpoint: str, unloaded_keys,
                                      **kwargs) -> Dict[str, PriorCounts]:
    """
    Priors of a new run that starts from ``checkpoint`` (fine-tuning, not a resume):
    every head's prior is counted on the run's own data, and the adaptive thresholds
    follow from it, whatever prior the checkpoint held. The classification bias is set
    to logit(prior) for every head whose bias did not load (``unloaded_keys``: the
    model's state keys the load left as they were, e.g. another number of classes) and
    kept, as trained, for the others. Logs what was counted, set and kept.
    """
    heads = prior_heads(model)
    if not heads:
        return {}
    unloaded = set(unloaded_keys)
    names = _state_names(model)
    before = {name: (float(owner.prior_state.prior), owner.prior_state.fingerprint,
                     names.get(id(owner.prior_state.prior)) not in unloaded)
              for name, _, _, _, owner in heads}
    kept = _loaded_bias_heads(model, unloaded)
    counts = initialize_priors(cfg, model, force=True, keep_bias=kept, **kwargs)
    if not comm.is_main_process():
        return counts
    for name, _, _, _, owner in heads:
        c = counts[name]
        old, old_fp, had = before[name]
        if not (had and old > 0):
            was = "the checkpoint held none"
        elif old_fp == c.fingerprint:
            was = f"the checkpoint's {old:.4g} was counted on the same data"
        else:
            was = f"the checkpoint's {old:.4g} (fingerprint {old_fp or 'unknown'}) replaced"
        if name in kept:
            bias = "classification bias kept from the checkpoint (it loaded: trained)"
        else:
            bias = (f"classification bias set to logit(prior) = {bias_from_prior(c.prior):.4g}"
                    " (the checkpoint's did not load: absent or of another shape)")
        logger.info("new run from %s: prior[%s] = %.4g counted on this run's data (fingerprint "
                    "%s; %s), adaptive thresholds from it; %s", checkpoint, name, c.prior,
                    c.fingerprint, was, bias)
    logger.info("classification bias set from the prior for %s, kept from the checkpoint for %s",
                [h[0] for h in heads if h[0] not in kept] or "no head", kept or "no head")
    return counts


class PriorInitHook(HookBase):
    """
    Before the first iteration, set the priors of the model's Sampling-Free heads:

    - a resumed run (``--resume``) keeps every prior, bias and threshold the checkpoint
      carries, and counts only the priors it lacks;
    - a new run from a checkpoint (``train.init_checkpoint`` / ``MODEL.WEIGHTS``) counts
      every prior on its own data and sets the bias of the heads whose bias did not load
      (:func:`initialize_priors_from_checkpoint`);
    - a run from scratch counts and sets them all.

    Which case applies is read, when training starts, from ``checkpointer`` (by default
    the trainer's ``checkpointer``, as Detectron2's ``DefaultTrainer`` has one): its
    ``resumed_from``, ``loaded_from`` and ``unloaded_keys``, which
    :class:`scratchdet.engine.checkpoint.AtomicCheckpointer` records. Without those
    records (no checkpointer, or one that does not record its loads) the hook keeps the
    priors the model carries and counts the missing ones.
    """

    def __init__(self, cfg, model, checkpointer=None):
        self.cfg, self.model, self.checkpointer = cfg, model, checkpointer

    def _checkpointer(self):
        if self.checkpointer is not None:
            return self.checkpointer
        return getattr(getattr(self, "trainer", None), "checkpointer", None)

    def before_train(self):
        ckpt = self._checkpointer()
        loaded = getattr(ckpt, "loaded_from", None)
        if loaded and not getattr(ckpt, "resumed_from", None) and \
                hasattr(ckpt, "unloaded_keys"):
            counts = initialize_priors_from_checkpoint(self.cfg, self.model, loaded,
                                                       ckpt.unloaded_keys)
        else:
            counts = initialize_priors(self.cfg, self.model)
        storage = self.trainer.storage
        for h in prior_heads(self.model):
            name, owner = h[0], h[4]
            storage.put_scalar(f"prior/{name}", float(owner.prior_state.prior), smoothing_hint=False)
        if counts and comm.is_main_process():
            logger.info("priors set: %s", {k: round(v.prior, 8) for k, v in counts.items()})
