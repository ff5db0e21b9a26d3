"""yacs (YAML) configs through train_net.py: Detectron2's DefaultTrainer path with the
Sampling-Free prior counted as the LazyConfig path counts it."""
import json
import os
import subprocess
import sys

import pytest
import torch

from detectron2.config import instantiate
from detectron2.modeling import build_model

from scratchdet.data import ShapesSpec, generate_shapes
from scratchdet.engine import load_config, load_yacs_config
from scratchdet.engine.lazy_train import ConfigOverrideError
from scratchdet.sampling_free import bias_from_prior, estimate_priors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SF_DEMO = os.path.join(REPO, "configs", "shapes", "sampling_free_root_resnet18_fpn_demo")


def _counts(cfg, model):
    c = estimate_priors(cfg, model, use_cache=False, progress=False)["retinanet"]
    return dict(c.to_dict(), seconds=None, fingerprint=c.fingerprint)


@pytest.fixture(scope="module")
def lazy_prior():
    """The shapes demo's prior as the LazyConfig path counts it (no cache)."""
    cfg = load_config(SF_DEMO + ".py")
    return _counts(cfg, instantiate(cfg.model))


def test_yaml_prior_equals_the_lazyconfig_prior(lazy_prior):
    cfg = load_yacs_config(SF_DEMO + ".yaml")
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (0,)  # Detectron2's "no resize"
    yacs = _counts(cfg, build_model(cfg))
    assert yacs == lazy_prior
    assert yacs["num_images"] > 1000 and 1e-4 < yacs["prior"] < 1e-2


def _run(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(REPO, "train_net.py")] + args, cwd=str(cwd),
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p.stdout + p.stderr


def test_train_net_trains_evaluates_and_resumes_a_yaml_config(lazy_prior, tmp_path):
    # a small test set, registered through DATASETS.COCO_INSTANCES (the config's own
    # 200-image test set would only make this slower)
    ann = generate_shapes(ShapesSpec(num_images=12, seed=5), str(tmp_path / "val"))
    out = tmp_path / "out"
    args = ["--config-file", SF_DEMO + ".yaml", "SOLVER.IMS_PER_BATCH", "2",
            "DATASETS.COCO_INSTANCES", repr([["yacs_test_val", ann, str(tmp_path / "val" / "images")]]),
            "DATASETS.TEST", "('yacs_test_val',)", "OUTPUT_DIR", str(out)]
    log = _run(args + ["SOLVER.MAX_ITER", "2"], tmp_path)
    p = lazy_prior["prior"]
    assert f"prior[retinanet] = {p:.4g}" in log and "priors set" in log
    assert "Evaluation results for yacs_test_val" in log and "copypaste: AP,AP50" in log
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert state["prior_state.prior"].item() == p
    assert bytes(state["prior_state.data_fingerprint"].tolist()).hex() == lazy_prior["fingerprint"]
    assert torch.equal(state["prior_state.score_thresholds"],
                       torch.full((3,), p * 3, dtype=torch.float32))
    with open(out / "metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert records[0]["prior/retinanet"] == pytest.approx(p, rel=1e-12)
    assert max(r["iteration"] for r in records if "total_loss" in r) == 1
    # --resume continues at iteration 2 and keeps the prior (nothing counted)
    log = _run(["--resume"] + args + ["SOLVER.MAX_ITER", "3"], tmp_path)
    assert f"resumed from {out / 'model_final.pth'} at iteration 1" in log
    assert "priors set" not in log and "same data" in log
    # --eval-only with MODEL.WEIGHTS: the checkpoint's adaptive thresholds
    log = _run(["--config-file", SF_DEMO + ".yaml", "--eval-only", "MODEL.WEIGHTS",
                str(out / "model_final.pth")] + args[2:-1] + [str(tmp_path / "eval")], tmp_path)
    assert "Evaluation results for yacs_test_val" in log and "priors set" not in log


@pytest.mark.parametrize("opts, needles", [
    (["SOLVER.MAX_ITR", "3"], ["SOLVER.MAX_ITR 3", "Non-existent key",
                               "did you mean SOLVER.MAX_ITER?"]),
    (["SOLVER.MAX_ITER=3"], ["SOLVER.MAX_ITER=3", "KEY VALUE", "has no value"]),
    (["SOLVER.MAX_ITER=3", "SOLVER.BASE_LR=0.1"], ["SOLVER.MAX_ITER=3", "not key=value"]),
    (["SOLVER.MAX_ITER", "'many'"], ["SOLVER.MAX_ITER", "many", "Type mismatch"]),
    (["SOLVER.MAX_ITER", "3", "--resume"], ["--resume", "before the overrides"]),
])
def test_bad_yacs_override_names_the_file_key_and_value(opts, needles, tmp_path):
    import train_net

    out = tmp_path / "out"
    with pytest.raises(ConfigOverrideError) as e:
        train_net.cli(["--config-file", SF_DEMO + ".yaml", "OUTPUT_DIR", str(out)] + opts)
    for needle in needles + [SF_DEMO + ".yaml"]:
        assert needle in str(e.value), (needle, str(e.value))
    assert not out.exists()


def test_bias_of_a_fresh_yacs_model_is_set_from_the_prior(lazy_prior, tmp_path):
    """ScratchDetTrainer's first step: the hook sets logit(prior) before iteration 0."""
    from detectron2.utils.events import EventStorage

    from scratchdet.engine import ScratchDetTrainer
    from scratchdet.sampling_free import PriorInitHook

    cfg = load_yacs_config(SF_DEMO + ".yaml", ["SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR",
                                               str(tmp_path)])
    trainer = ScratchDetTrainer(cfg)
    assert isinstance(trainer._hooks[0], PriorInitHook)
    trainer.resume_or_load(resume=False)
    with EventStorage(0) as trainer.storage:
        trainer._hooks[0].before_train()
    logit = torch.tensor(bias_from_prior(lazy_prior["prior"]), dtype=torch.float32)
    for b in trainer.model.prior_bias_params():
        assert torch.equal(b.detach(), torch.full_like(b, logit))
