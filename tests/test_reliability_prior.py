"""Reliability of the prior: the prior cache under corruption and concurrency (one process
counts per fingerprint, atomic writes, a lock left behind or held too long), and stale
priors (fingerprints of the anchors, matcher, input size and data; a checkpoint's prior
counted on other data). Everything runs the real code: the real models, the real prior
estimator."""
import json
import logging
import multiprocessing as mp
import os
import time

import numpy as np
import pytest
import torch

import detectron2.data.transforms as T
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import EventStorage

from conftest import REPO, log_messages, register_coco
from scratchdet.data import ShapesSpec, generate_shapes
from scratchdet.engine import load_config
from scratchdet.sampling_free import (
    AnchorCounter,
    PriorInitHook,
    classification_bias_params,
    estimate_priors,
    initialize_priors,
)
from scratchdet.sampling_free import prior as prior_mod
from scratchdet.sampling_free.prior import PriorCounts, load_or_count
from scratchdet.sampling_free.prior import cache as prior_cache

SF_DEMO = os.path.join(REPO, "configs", "shapes", "sampling_free_root_resnet18_fpn_demo.py")


# -- 8. the prior cache: corruption and concurrency -------------------------------------
def _counter():
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
    from detectron2.modeling.matcher import Matcher

    gen = DefaultAnchorGenerator(sizes=[[16, 32]], aspect_ratios=[[0.5, 1.0, 2.0]],
                                 strides=[8], offset=0.5)
    return AnchorCounter(gen, Matcher([0.4, 0.5], [0, -1, 1], True), 3)


def _dicts(n=300, seed=0):
    from detectron2.structures import BoxMode

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        xy = rng.uniform(0, 100, (4, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, 60, (4, 2))], 1)
        out.append(dict(height=160, width=160, annotations=[
            dict(bbox=b.tolist(), bbox_mode=BoxMode.XYXY_ABS, category_id=int(c), iscrowd=0)
            for b, c in zip(boxes, rng.integers(0, 3, 4))]))
    return out


@pytest.mark.parametrize("corruption", ["{not json", "[1, 2]", '{"num_classes": 3}',
                                        "truncated", "other fingerprint", "impossible"])
def test_corrupt_cache_is_recounted_with_a_warning(tmp_path, monkeypatch, log, corruption):
    monkeypatch.setenv("SCRATCHDET_CACHE", str(tmp_path))
    dicts = _dicts(20)
    right, hit = load_or_count("d", dicts, _counter(), [], 3, progress=False)
    assert not hit and right.num_foreground > 0
    (path,) = [tmp_path / "priors" / f for f in os.listdir(tmp_path / "priors")
               if f.endswith(".json")]
    text = path.read_text()
    bad = {"truncated": text[: len(text) // 2],
           "other fingerprint": text.replace(right.fingerprint, "0123456789abcdef"),
           "impossible": text.replace(f'"num_valid": {right.num_valid}', '"num_valid": 0'),
           }.get(corruption, corruption)
    assert bad != text
    path.write_text(bad)
    again, hit = load_or_count("d", dicts, _counter(), [], 3, progress=False)
    assert not hit
    assert (again.num_foreground, again.num_valid, again.per_class) == \
        (right.num_foreground, right.num_valid, right.per_class)
    warnings = [m for m in log_messages(log, logging.WARNING) if "prior cache" in m]
    assert len(warnings) == 1 and str(path) in warnings[0] and "recomputing" in warnings[0]
    assert json.loads(path.read_text())["num_valid"] == right.num_valid  # rewritten whole
    _, hit = load_or_count("d", dicts, _counter(), [], 3, progress=False)
    assert hit


def _count_in_process(cache, barrier, queue):
    os.environ["SCRATCHDET_CACHE"] = cache
    torch.set_num_threads(1)
    barrier.wait()
    counts, hit = load_or_count("d", _dicts(), _counter(), [], 3, progress=False)
    queue.put((counts.num_foreground, counts.num_valid, counts.per_class, hit))


def _read_in_process(path, stop, queue, limit=120.0):
    seen = bad = 0
    t0 = time.monotonic()
    while not stop.is_set() and time.monotonic() - t0 < limit:
        if os.path.exists(path):
            try:
                with open(path) as f:
                    json.load(f)
                seen += 1
            except FileNotFoundError:
                pass
            except ValueError:
                bad += 1
    queue.put((seen, bad))


def _write_in_process(path, counts, fp, n):
    for _ in range(n):
        prior_mod._write_cache(path, counts, fp)


def test_concurrent_processes_count_once_and_never_expose_partial_json(tmp_path):
    """Four processes count the same fingerprint at once: exactly one counts (the others
    wait on the lock and read its result), all get the same counts, no temporary or
    partial file is left; a reader polling the cache file meanwhile, and while three
    processes rewrite a large cache file, never parses partial JSON."""
    ctx = mp.get_context("fork")
    cache = str(tmp_path / "cache")
    fp = prior_mod.prior_fingerprint("d", _dicts(), _counter(), [], 3)
    path = os.path.join(cache, "priors", fp + ".json")  # prior._cache_path under `cache`
    queue, stop = ctx.Queue(), ctx.Event()
    barrier = ctx.Barrier(4)
    reader = ctx.Process(target=_read_in_process, args=(path, stop, queue), daemon=True)
    procs = [ctx.Process(target=_count_in_process, args=(cache, barrier, queue), daemon=True)
             for _ in range(4)]
    # many whole-file rewrites of a large file while the reader polls
    big = PriorCounts(num_classes=3, num_foreground=5, num_valid=10 ** 6,
                      per_class=list(range(30000)), num_images=1)  # a 200 kB file
    writers = [ctx.Process(target=_write_in_process, args=(path, big, fp, 10), daemon=True)
               for _ in range(3)]
    try:
        reader.start()
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        results = [queue.get(timeout=10) for _ in procs]
        assert all(p.exitcode == 0 for p in procs)
        assert sorted(r[3] for r in results) == [False, True, True, True], results
        assert len({(r[0], r[1], tuple(r[2])) for r in results}) == 1
        for p in writers:
            p.start()
        for p in writers:
            p.join(120)
        stop.set()
        reader.join(30)
        seen, bad = queue.get(timeout=10)
        assert all(p.exitcode == 0 for p in writers)
        assert seen > 0 and bad == 0, (seen, bad)
    finally:
        stop.set()
        for p in [reader] + procs + writers:
            if p.is_alive():
                p.terminate()
    left = [f for f in os.listdir(os.path.dirname(path)) if f.startswith(".tmp")]
    assert not left


def test_cache_lock_left_behind_or_held_too_long(tmp_path, monkeypatch, log):
    """A lock file left by a dead process blocks nobody (the kernel released its
    flock); a lock held past the timeout is reported and the prior counted anyway."""
    import fcntl

    monkeypatch.setenv("SCRATCHDET_CACHE", str(tmp_path))
    dicts = _dicts(10)
    fp = prior_mod.prior_fingerprint("d", dicts, _counter(), [], 3)
    path = prior_mod._cache_path(fp)
    os.makedirs(os.path.dirname(path))
    with open(path + ".lock", "w") as f:
        f.write("999999999")  # a holder that no longer exists
    counts, hit = load_or_count("d", dicts, _counter(), [], 3, progress=False)
    assert not hit and os.path.isfile(path) and counts.fingerprint == fp
    os.unlink(path)
    monkeypatch.setattr(prior_cache, "LOCK_TIMEOUT", 0.3)
    fd = os.open(path + ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held "by another process" (another open file)
    try:
        again, hit = load_or_count("d", dicts, _counter(), [], 3, progress=False)
    finally:
        os.close(fd)
    assert not hit and again.num_valid == counts.num_valid and os.path.isfile(path)
    assert any("still held" in m and path in m for m in log_messages(log, logging.WARNING))


# -- 9. stale priors ------------------------------------------------------------------------
def _fingerprint(cfg, model=None, **kw):
    model = model if model is not None else instantiate(cfg.model)
    return estimate_priors(cfg, model, progress=False, **kw)["retinanet"].fingerprint


def test_fingerprint_covers_anchors_matcher_input_size_and_data(tmp_path, monkeypatch, log):
    monkeypatch.setenv("SCRATCHDET_CACHE", str(tmp_path))
    base = load_config(SF_DEMO)
    base.dataloader.train.dataset.names = "scratchdet_shapes_val"
    fp0 = _fingerprint(base)
    assert len(fp0) == 16
    log.clear()
    assert _fingerprint(base) == fp0  # unchanged config: a cache hit
    assert any("(cached)" in m for m in log_messages(log, logging.INFO))

    def changed(edit):
        cfg = load_config(SF_DEMO)
        cfg.dataloader.train.dataset.names = "scratchdet_shapes_val"
        edit(cfg)
        log.clear()
        fp = _fingerprint(cfg)
        assert not any("(cached)" in m for m in log_messages(log, logging.INFO))  # recounted
        return fp

    def anchors(c):
        c.model.anchor_generator.sizes = [[x * 1.5] for x in [8, 16, 32, 64, 128]]
        c.model.head.num_anchors = 1

    def matcher(c):
        c.model.anchor_matcher.thresholds = [0.3, 0.5]

    def size(c):
        c.dataloader.train.mapper.augmentations = [L(T.ResizeShortestEdge)(
            short_edge_length=128, max_size=256)]

    def data(c):
        ann = generate_shapes(ShapesSpec(num_images=5, seed=9), str(tmp_path / "other"))
        register_coco("rel_other_shapes", ann, os.path.join(str(tmp_path / "other"), "images"))
        c.dataloader.train.dataset.names = "rel_other_shapes"

    fps = {"base": fp0}
    for edit in (anchors, matcher, size, data):
        fps[edit.__name__] = changed(edit)
    assert len(set(fps.values())) == len(fps), fps
    # the same names with other annotations (an edited JSON) is other data, too
    dicts = DatasetCatalog.get("scratchdet_shapes_val")[:200]
    edited = [dict(d, annotations=d["annotations"][:-1]) if i == 0 else d
              for i, d in enumerate(dicts)]
    assert _fingerprint(base, dataset_dicts=edited) not in fps.values()


@pytest.fixture(scope="module")
def checkpoint_on_shapes(tmp_path_factory):
    """A SF demo model whose prior was counted on scratchdet_shapes_val, checkpointed."""
    cfg = load_config(SF_DEMO)
    cfg.dataloader.train.dataset.names = "scratchdet_shapes_val"
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    counts = initialize_priors(cfg, model, use_cache=False, progress=False)["retinanet"]
    out = tmp_path_factory.mktemp("ckpt")
    DetectionCheckpointer(model, str(out)).save("shapes")
    return cfg, str(out / "shapes.pth"), counts


def _hook_before_train(cfg, model):
    """PriorInitHook.before_train as a trainer runs it."""
    trainer = SimpleTrainer(model, [], torch.optim.SGD(model.parameters(), lr=0.0))
    hook = PriorInitHook(cfg, model)
    trainer.register_hooks([hook])
    with EventStorage(0) as trainer.storage:
        trainer.before_train()
    return trainer.storage.history("prior/retinanet").latest()


def test_checkpoint_prior_from_other_data_is_kept_and_reported(checkpoint_on_shapes, tmp_path,
                                                               log):
    cfg, ckpt, counts = checkpoint_on_shapes
    ann = generate_shapes(ShapesSpec(num_images=5, seed=9), str(tmp_path / "other"))
    register_coco("rel_finetune", ann, str(tmp_path / "other" / "images"))
    cfg = load_config(SF_DEMO)
    cfg.dataloader.train.dataset.names = "rel_finetune"
    model = instantiate(cfg.model)
    DetectionCheckpointer(model).load(ckpt)
    assert model.prior_state.fingerprint == counts.fingerprint
    bias = [b.detach().clone() for b in classification_bias_params(model.head)]
    log.clear()
    logged_prior = _hook_before_train(cfg, model)
    assert logged_prior == pytest.approx(counts.prior)
    assert model.prior_state.prior.item() == pytest.approx(counts.prior)  # kept
    assert all(torch.equal(a, b) for a, b in zip(bias, classification_bias_params(model.head)))
    current = _fingerprint(cfg, model)
    assert current != counts.fingerprint
    warns = [m for m in log_messages(log, logging.WARNING) if "kept from the checkpoint" in m]
    assert len(warns) == 1, log_messages(log, logging.WARNING)
    assert counts.fingerprint in warns[0] and current in warns[0] and "rel_finetune" in warns[0]
    # the same data: kept, said at INFO, no warning
    cfg.dataloader.train.dataset.names = "scratchdet_shapes_val"
    same = instantiate(cfg.model)
    DetectionCheckpointer(same).load(ckpt)
    log.clear()
    _hook_before_train(cfg, same)
    assert not [m for m in log_messages(log, logging.WARNING) if "checkpoint" in m]
    assert any("same data" in m for m in log_messages(log, logging.INFO))


def test_checkpoint_without_stored_fingerprint_still_loads(checkpoint_on_shapes, tmp_path, log):
    """A checkpoint written before the fingerprint buffer existed: it loads, its prior is
    kept, and the message says the data it was counted on is unknown."""
    cfg, ckpt, counts = checkpoint_on_shapes
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    removed = [k for k in list(state["model"]) if k.endswith("data_fingerprint")]
    assert removed
    for k in removed:
        del state["model"][k]
    old = str(tmp_path / "old.pth")
    torch.save(state, old)
    model = instantiate(cfg.model)
    DetectionCheckpointer(model).load(old)
    assert model.prior_state.prior.item() == pytest.approx(counts.prior)
    assert model.prior_state.fingerprint == ""
    log.clear()
    _hook_before_train(cfg, model)
    assert model.prior_state.prior.item() == pytest.approx(counts.prior)
    assert any("does not record" in m for m in log_messages(log, logging.INFO))
