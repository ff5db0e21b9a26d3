"""Sampling-Free runs that start from a checkpoint: a new run from ``train.init_checkpoint``
counts its own data and sets the bias of the heads whose bias did not load; ``--resume``
keeps the checkpoint's prior, bias and thresholds.

Each run trains one iteration at learning rate 0, so the checkpoint it writes holds the
bias as it was when training started."""
import contextlib
import logging
import os
import shutil
import uuid

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog

from scratchdet.data import ShapesSpec, generate_shapes, register_coco_dataset
from scratchdet.engine import build_model, do_train, load_config
from scratchdet.sampling_free import bias_from_prior, estimate_priors, prior_heads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SF_DEMO = os.path.join(REPO, "configs", "shapes", "sampling_free_root_resnet18_fpn_demo.py")
SHAPES = "scratchdet_shapes_val"  # 200 images: the shapes data the runs fine-tune on


@contextlib.contextmanager
def _scratchdet_log():
    """The messages of the "scratchdet" logger (also when setup_logger made it
    non-propagating) while the block runs."""
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    lg = logging.getLogger("scratchdet")
    old_level = lg.level
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)
    try:
        yield records
    finally:
        lg.removeHandler(handler)
        lg.setLevel(old_level)


def _cfg(out, data=SHAPES, init=""):
    cfg = load_config(SF_DEMO, [
        f"train.output_dir={out}", "train.max_iter=1", "train.log_period=1", "optimizer.lr=0.0",
        "dataloader.train.total_batch_size=2", f"dataloader.train.dataset.names={data}"])
    cfg.train.init_checkpoint = init
    del cfg.dataloader.evaluator  # the runs are checked through their checkpoints
    return cfg


def _train(out, data=SHAPES, init="", resume=False, max_iter=1):
    """Train the shapes Sampling-Free demo into ``out``; returns (the final checkpoint's
    model state, the log's messages, the count of ``data`` with a fresh model)."""
    cfg = _cfg(out, data, init)
    cfg.train.max_iter = max_iter
    expected = estimate_priors(cfg, build_model(cfg), progress=False)["retinanet"]
    with _scratchdet_log() as records:
        do_train(cfg, build_model(cfg), resume=resume)
    state = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu",
                       weights_only=False)["model"]
    return state, [r.getMessage() for r in records], expected


def _bias_keys(cfg):
    model = build_model(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    (_, _, _, _, owner), = prior_heads(model)
    return [names[id(b)] for b in owner.prior_bias_params()]


def _assert_prior(state, counts, num_classes=3):
    """The checkpoint holds ``counts``: prior, per-class counts, fingerprint, thresholds."""
    p = counts.prior
    assert state["prior_state.prior"].item() == p
    assert state["prior_state.class_counts"].tolist() == counts.per_class
    assert bytes(state["prior_state.data_fingerprint"].tolist()).hex() == counts.fingerprint
    assert torch.equal(state["prior_state.score_thresholds"],
                       torch.full((num_classes,), p * num_classes, dtype=torch.float32))


@pytest.fixture(scope="module")
def finetuned_80_to_3(sf_coco_mini_run, tmp_path_factory):
    """The coco_mini (80 classes) checkpoint fine-tuned on shapes (3 classes)."""
    init = str(sf_coco_mini_run / "model_final.pth")
    out = str(tmp_path_factory.mktemp("ft_80_to_3"))
    state, log, counts = _train(out, init=init)
    coco = torch.load(init, map_location="cpu", weights_only=False)["model"]
    return out, init, coco, state, log, counts


def test_finetuning_80_to_3_classes_counts_the_new_data(finetuned_80_to_3):
    out, init, coco, state, log, counts = finetuned_80_to_3
    p = counts.prior
    coco_prior = coco["prior_state.prior"].item()
    assert 1e-4 < p < 1e-2 and abs(p - coco_prior) > 1e-4  # the shapes prior, not COCO's
    _assert_prior(state, counts)
    # the classification bias did not load (720 vs 27 anchors x classes): logit(prior)
    keys = _bias_keys(_cfg(out))
    assert keys and all(tuple(coco[k].shape) != tuple(state[k].shape) for k in keys)
    logit = torch.tensor(bias_from_prior(p), dtype=torch.float32)
    for k in keys:
        assert torch.equal(state[k], torch.full_like(state[k], logit)), k
    # the rest of the network came from the checkpoint
    convs = [k for k, v in state.items() if k.startswith("backbone.") and v.dim() == 4]
    assert convs and all(torch.equal(state[k], coco[k]) for k in convs)
    # the log says what happened, and nothing about keeping the checkpoint's prior
    line, = [m for m in log if m.startswith(f"new run from {init}: prior[retinanet]")]
    for needle in (f"{p:.4g} counted on this run's data", counts.fingerprint,
                   f"the checkpoint's {coco_prior:.4g}", "replaced",
                   f"classification bias set to logit(prior) = {bias_from_prior(p):.4g}",
                   "did not load"):
        assert needle in line, (needle, line)
    assert "classification bias set from the prior for ['retinanet'], kept from the " \
           "checkpoint for no head" in log
    assert not [m for m in log if "kept from the checkpoint" in m and "prior[" in m]


@pytest.fixture(scope="module")
def other_shapes(tmp_path_factory):
    """Other data with the same 3 classes: 24 shapes images of another seed, registered."""
    root = tmp_path_factory.mktemp("other_shapes")
    name = "ft_other_" + uuid.uuid4().hex[:8]
    ann = generate_shapes(ShapesSpec(num_images=24, seed=7), str(root))
    register_coco_dataset(name, ann, str(root / "images"))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_finetuning_same_classes_on_other_data_keeps_the_trained_bias(finetuned_80_to_3,
                                                                        other_shapes, tmp_path):
    src, _, _, shapes_state, _, shapes_counts = finetuned_80_to_3
    init = os.path.join(src, "model_final.pth")
    state, log, counts = _train(str(tmp_path / "out"), data=other_shapes, init=init)
    assert counts.prior != shapes_counts.prior and counts.fingerprint != shapes_counts.fingerprint
    _assert_prior(state, counts)  # counted on the new data; thresholds from that count
    for k in _bias_keys(_cfg(src)):  # the bias loaded: kept as the checkpoint had it
        assert torch.equal(state[k], shapes_state[k]), k
        assert not torch.equal(state[k], torch.full_like(
            state[k], bias_from_prior(counts.prior))), k
    line, = [m for m in log if m.startswith(f"new run from {init}: prior[retinanet]")]
    assert f"the checkpoint's {shapes_counts.prior:.4g} (fingerprint " \
           f"{shapes_counts.fingerprint}) replaced" in line
    assert "classification bias kept from the checkpoint (it loaded: trained)" in line
    assert "classification bias set from the prior for no head, kept from the checkpoint " \
           "for ['retinanet']" in log


def test_resume_keeps_the_checkpoints_prior_bias_and_thresholds(finetuned_80_to_3,
                                                                other_shapes, tmp_path):
    src, _, _, shapes_state, _, shapes_counts = finetuned_80_to_3
    out = str(tmp_path / "resumed")
    shutil.copytree(src, out)
    # resumed on other data: nothing is recounted or reset
    state, log, counts = _train(out, data=other_shapes, resume=True, max_iter=2)
    assert counts.fingerprint != shapes_counts.fingerprint
    _assert_prior(state, shapes_counts)
    for k in _bias_keys(_cfg(src)):
        assert torch.equal(state[k], shapes_state[k]), k
    assert any(m.startswith("resumed from ") and "iteration 0" in m for m in log), log
    assert not [m for m in log if m.startswith("new run from")]
    warn, = [m for m in log if "kept from the checkpoint, counted on other data" in m]
    assert shapes_counts.fingerprint in warn and counts.fingerprint in warn
