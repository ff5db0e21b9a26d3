"""Reliability of the training entry points (train_net.py, tools/demo.py): strict config
overrides, non-finite losses, SIGKILL + --resume, and existing output directories.

The runs train the Sampling-Free shapes demo detector on a 4-image COCO-format dataset
registered from the command line (``datasets.NAME.*`` overrides), 128 px images, batch 2,
so that each run takes seconds; the evaluation at the end runs on the same 4 images.
"""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

from detectron2.config import instantiate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SF_DEMO = os.path.join(REPO, "configs", "shapes", "sampling_free_root_resnet18_fpn_demo.py")
TINY = "reliability_engine_tiny"


def _write_tiny_coco(root, n=4, size=128):
    """``n`` images with two filled rectangles each (classes 1 and 2 of 3), COCO json."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    images, anns = [], []
    for i in range(n):
        img = np.full((size, size, 3), 96, np.uint8)
        for j, (x, y, w, h) in enumerate([(10 + 4 * i, 12, 40, 36), (70, 60 + 3 * i, 44, 50)]):
            cv2.rectangle(img, (x, y), (x + w, y + h), (40 + 80 * j, 200, 255 - 90 * j), -1)
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=j + 1,
                             bbox=[x, y, w, h], area=w * h, iscrowd=0))
        cv2.imwrite(os.path.join(root, "images", f"img{i}.jpg"), img)
        images.append(dict(id=i + 1, file_name=f"img{i}.jpg", width=size, height=size))
    cats = [dict(id=k + 1, name=c) for k, c in enumerate(["circle", "square", "triangle"])]
    ann = os.path.join(root, "tiny.json")
    with open(ann, "w") as f:
        json.dump(dict(images=images, annotations=anns, categories=cats), f)
    return ann, os.path.join(root, "images")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Overrides that train and evaluate on the tiny dataset, fast."""
    ann, images = _write_tiny_coco(str(tmp_path_factory.mktemp("tiny_coco")))
    return [f"datasets.{TINY}.json_file={ann}", f"datasets.{TINY}.image_root={images}",
            f"dataloader.train.dataset.names={TINY}", f"dataloader.test.dataset.names={TINY}",
            "dataloader.train.total_batch_size=2", "train.eval_period=0",
            "train.log_period=1"]


def _train_net(args, cwd, flags=(), check=True, timeout=300):
    """train_net.py on the SF demo config: ``flags`` (options) then ``args`` (overrides)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(REPO, "train_net.py"),
                        "--config-file", SF_DEMO] + list(flags) + args,
                       cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p


def _demo_module():
    spec = importlib.util.spec_from_file_location("scratchdet_demo_cli",
                                                  os.path.join(REPO, "tools", "demo.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _snapshot(d):
    """{name: bytes} of every file in ``d`` (none: empty)."""
    if not os.path.isdir(d):
        return {}
    out = {}
    for n in sorted(os.listdir(d)):
        if os.path.isfile(os.path.join(d, n)):
            with open(os.path.join(d, n), "rb") as f:
                out[n] = f.read()
    return out


def _kept(d):
    """The files a failed run must leave as they were: checkpoints, their tag, results."""
    return {k: v for k, v in _snapshot(d).items()
            if k.endswith(".pth") or k in ("last_checkpoint", "evaluation_results.json")}


def _metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


# -- 5: overrides ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad, needles", [
    ("train.max_itr=10", ["train.max_itr", "did you mean 'train.max_iter'", "+train.max_itr"]),
    ("model.backbone.depthh=3", ["model.backbone.depthh", "model.backbone.bottom_up.depth"]),
    ("train.max_iter=abc", ["train.max_iter", "int", "'abc'", "str"]),
    ("train.amp.enabled=1", ["train.amp.enabled", "bool", "1", "int"]),
])
def test_bad_override_is_refused_before_anything_is_written(bad, needles, tiny, tmp_path):
    import train_net
    from scratchdet.engine.lazy_train import ConfigOverrideError

    out = tmp_path / "out"
    # were the bad override ignored, this would train one iteration into `out`
    with pytest.raises(ConfigOverrideError) as e:
        train_net.cli(["--config-file", SF_DEMO] + tiny
                      + ["train.max_iter=1", f"train.output_dir={out}", bad])
    msg = str(e.value)
    for needle in needles + [bad, SF_DEMO]:
        assert needle in msg, (needle, msg)
    assert not out.exists()
    demo_out = tmp_path / "demo"
    with pytest.raises(ConfigOverrideError, match=bad.split("=")[0].replace(".", r"\.")):
        _demo_module().main(["--output", str(demo_out)] + tiny + ["train.max_iter=1", bad])
    assert not demo_out.exists()


def test_overrides_that_add_keys_on_purpose_or_datasets_are_accepted(tiny):
    from scratchdet.engine import load_config
    from scratchdet.engine.lazy_train import ConfigOverrideError

    cfg = load_config(SF_DEMO, tiny + ["+train.note=run-1", "++train.max_iter=7",
                                       "optimizer.lr=1", "train.init_checkpoint="])
    assert cfg.train.note == "run-1" and cfg.train.max_iter == 7
    assert cfg.dataloader.train.dataset.names == TINY
    assert isinstance(cfg.optimizer.lr, float) and cfg.optimizer.lr == 1.0  # int for a float
    with pytest.raises(ConfigOverrideError, match="train.max_iter already exists"):
        load_config(SF_DEMO, ["+train.max_iter=3"])
    # a misspelled field of a dataset entry is no new dataset
    with pytest.raises(ConfigOverrideError, match=f"datasets.{TINY}.json_fil"):
        load_config(SF_DEMO, tiny + [f"datasets.{TINY}.json_fil=/nope.json"])


# -- 6: non-finite loss ---------------------------------------------------------------------
def test_non_finite_loss_stops_with_iteration_and_losses_and_keeps_the_checkpoints(
        tiny, tmp_path):
    out = tmp_path / "out"
    common = tiny + [f"train.output_dir={out}", "train.checkpointer.period=1"]
    _train_net(common + ["train.max_iter=2"], tmp_path)
    kept = _kept(out)
    assert {"model_final.pth", "last_checkpoint", "evaluation_results.json"} <= set(kept)

    # images / 0: the loss is NaN at the resumed (and last) iteration 2, before any step
    p = _train_net(common + ["train.max_iter=3", "model.pixel_std=[0.0,0.0,0.0]"],
                   tmp_path, flags=["--resume"], check=False)
    log = p.stdout + p.stderr
    assert p.returncode != 0
    assert "FloatingPointError: loss became non-finite at iteration 2: " in log, log[-3000:]
    err = log[log.index("FloatingPointError: loss became non-finite"):].splitlines()[0]
    for term in ("loss_cls=nan", "loss_box_reg="):  # every term of the loss dict, with value
        assert term in err, err
    assert _kept(out) == kept  # no checkpoint, no evaluation of the failed model
    assert "Evaluation results" not in log

    # an infinite learning rate: iteration 0's loss is finite, its step makes the weights
    # non-finite; the checkpoint of iteration 0 is refused, the old checkpoints stay
    p = _train_net(common + ["train.max_iter=1", "optimizer.lr=inf"],
                   tmp_path, flags=["--overwrite"], check=False)
    log = p.stdout + p.stderr
    assert p.returncode != 0
    assert "FloatingPointError: iteration 0: the model has non-finite values" in log, log[-3000:]
    err = log[log.index("FloatingPointError: iteration 0"):].splitlines()[0]
    assert "loss_cls=" in err and "loss_box_reg=" in err and "model_0000000.pth" in err
    assert str(out / "model_final.pth") in err  # the last checkpoint, kept
    assert _kept(out) == kept
    ck = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ck["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


# -- 7: SIGKILL and --resume ----------------------------------------------------------------
def test_checkpoint_write_that_fails_midway_leaves_the_previous_checkpoint(tmp_path):
    from scratchdet.engine.checkpoint import AtomicCheckpointer

    class Unpicklable:
        def state_dict(self):
            return {"fine": torch.zeros(1000), "then": lambda: None}  # fails mid-pickle

    model = torch.nn.Linear(4, 2)
    AtomicCheckpointer(model, str(tmp_path)).save("model_0000009")
    before = _snapshot(tmp_path)
    ckpt = AtomicCheckpointer(model, str(tmp_path), extra=Unpicklable())
    with pytest.raises(Exception):
        ckpt.save("model_0000009")
    assert _snapshot(tmp_path) == before  # no truncated file, no stale temp file
    model.weight.data[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="weight"):
        AtomicCheckpointer(model, str(tmp_path)).save("model_0000010")
    assert _snapshot(tmp_path) == before


def test_sigkill_then_resume_and_a_truncated_checkpoint_is_never_loaded(tiny, tmp_path):
    from scratchdet.engine import load_config

    out = tmp_path / "out"
    common = tiny + [f"train.output_dir={out}", "train.checkpointer.period=3",
                     "train.checkpointer.max_to_keep=5"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", SF_DEMO]
        + common + ["train.max_iter=200"], cwd=str(tmp_path), env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (out / "last_checkpoint").exists():
            assert proc.poll() is None and time.time() < deadline, "no checkpoint written"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # possibly in the middle of the next write
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (out / "model_final.pth").exists()
    tag = (out / "last_checkpoint").read_text().strip()
    ck = torch.load(out / tag, map_location="cpu", weights_only=False)
    it = ck["iteration"]
    assert it >= 2 and ck["trainer"]["iteration"] == it
    n_states = len(ck["trainer"]["optimizer"]["state"])
    prior = float(ck["model"]["prior_state.prior"])  # the Sampling-Free prior
    assert n_states > 0 and ck["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == it + 1

    max_iter = it + 2
    p = _train_net(common + [f"train.max_iter={max_iter}"], tmp_path, flags=["--resume"])
    log = p.stdout + p.stderr
    assert f"Starting training from iteration {it + 1}" in log
    assert f"resumed from {out / tag}: iteration {it}, optimizer state for {n_states} " \
           "parameters" in log, log[-3000:]
    assert "priors set" not in log  # the prior came from the checkpoint, not recounted
    # the LR schedule continues at iteration it+1 from the checkpoint's base lr
    cfg_sched = instantiate(load_config(SF_DEMO).lr_multiplier)
    base = ck["trainer"]["optimizer"]["param_groups"][0]["initial_lr"]
    rec = [r for r in _metrics(out) if r.get("iteration") == it + 1 and "lr" in r][-1]
    assert rec["lr"] == pytest.approx(base * cfg_sched((it + 1) / max_iter), rel=1e-6)
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == max_iter - 1
    assert float(final["model"]["prior_state.prior"]) == pytest.approx(prior)

    # a write killed midway by an older writer: a truncated model file, a stale temp file,
    # and last_checkpoint naming the truncated file
    data = (out / "model_final.pth").read_bytes()
    (out / "model_0009999.pth").write_bytes(data[: len(data) // 2])
    (out / "model_0009999.pth.tmp").write_bytes(data[: len(data) // 3])
    (out / "last_checkpoint").write_text("model_0009999.pth")
    p = _train_net(common + [f"train.max_iter={max_iter + 1}"], tmp_path, flags=["--resume"])
    log = p.stdout + p.stderr
    assert "model_0009999.pth, which is incomplete or unreadable" in log, log[-3000:]
    assert f"resuming from {out / 'model_final.pth'} instead" in log
    assert f"Starting training from iteration {max_iter}" in log
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"


# -- 12: existing output directories ----------------------------------------------------------
def test_existing_checkpoints_are_refused_without_resume_or_overwrite(tiny, tmp_path):
    import train_net

    out = tmp_path / "out"
    out.mkdir()
    (out / "model_final.pth").write_bytes(b"an earlier run's weights")
    (out / "last_checkpoint").write_text("model_final.pth")
    before = {k: (v, os.stat(out / k).st_mtime_ns) for k, v in _snapshot(out).items()}
    with pytest.raises(FileExistsError) as e:
        train_net.cli(["--config-file", SF_DEMO] + tiny
                      + ["train.max_iter=1", f"train.output_dir={out}"])
    for needle in (str(out), "model_final.pth", "last_checkpoint", "--resume", "--overwrite"):
        assert needle in str(e.value)
    assert {k: (v, os.stat(out / k).st_mtime_ns) for k, v in _snapshot(out).items()} == before

    demo_out = tmp_path / "demo"
    (demo_out / "train").mkdir(parents=True)
    (demo_out / "train" / "model_final.pth").write_bytes(b"an earlier demo")
    with pytest.raises(FileExistsError, match="model_final.pth"):
        _demo_module().main(["--output", str(demo_out)] + tiny + ["train.max_iter=1"])
    assert _snapshot(demo_out / "train") == {"model_final.pth": b"an earlier demo"}
    assert sorted(os.listdir(demo_out)) == ["train"]

    # --overwrite: the demo (as `make demo` runs it a second time) trains and replaces it
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(REPO, "tools", "demo.py"),
                        "--output", str(demo_out), "--overwrite"] + tiny
                       + ["train.max_iter=1", "train.eval_period=1"],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    ck = torch.load(demo_out / "train" / "model_final.pth", map_location="cpu",
                    weights_only=False)
    assert ck["iteration"] == 0 and os.path.isfile(demo_out / "metrics.json")
