"""Two GLOO processes on the CPU against one: train_net.py trains, counts the prior,
checkpoints and evaluates the same for everything that is deterministic.

- the prior: counted in shards, summed exactly, so identical;
- the initial weights: rank 0's (``train.seed``; DDP broadcasts them);
- the data: with ``train.seed`` the sampler's seed is rank 0's draw, and the two ranks
  split each batch of the one-process run (same images per iteration);
- the losses on those images: within a tolerance, because BatchNorm normalises each
  process's half batch and RetinaNet's loss normaliser counts each process's positives;
- evaluation: the 2-process evaluation of a checkpoint equals a 1-process ``--eval-only``
  of the same checkpoint.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "shapes", "scratchdet_root_resnet18_fpn_demo.py")
SF_DEMO = os.path.join(REPO, "configs", "shapes", "sampling_free_root_resnet18_fpn_demo.py")
COMMON = ["train.seed=0", "train.log_period=1", "dataloader.train.num_workers=0",
          "dataloader.test.num_workers=0", "dataloader.train.total_batch_size=4"]


def _run(args, cwd, procs=1):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(REPO, "train_net.py")]
    if procs > 1:
        cmd += ["--num-gpus", str(procs), "--dist-url", "auto"]
    p = subprocess.run(cmd + args, cwd=str(cwd), env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p.stdout + p.stderr


def _metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _results(out_dir):
    with open(os.path.join(out_dir, "evaluation_results.json")) as f:
        return json.load(f)["results"]


def _same(a, b, rel=1e-6):
    """Nested results equal (NaN equal to NaN)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rel) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == pytest.approx(b, rel=rel, abs=1e-9)


def test_sampling_free_two_processes_match_one(tmp_path):
    runs = {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        log = _run(["--config-file", SF_DEMO, "train.max_iter=2", "train.eval_period=0",
                    f"train.output_dir={out}"] + COMMON, tmp_path, procs)
        runs[procs] = (out, log, _metrics(out))
    (out1, _, m1), (out2, log2, m2) = runs[1], runs[2]
    assert "on 2 devices" in log2 and "prior[retinanet]" in log2
    assert max(r["iteration"] for r in m2 if "total_loss" in r) == 1
    # the final evaluation ran distributed, at the adaptive and the fixed threshold
    assert any("bbox/AP" in r and "bbox@0.05/AP" in r for r in m2)
    # the prior: exact
    p1 = [r["prior/retinanet"] for r in m1 if "prior/retinanet" in r]
    p2 = [r["prior/retinanet"] for r in m2 if "prior/retinanet" in r]
    assert p1 and p1 == p2
    ck1 = torch.load(out1 / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    ck2 = torch.load(out2 / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert ck1.keys() == ck2.keys()
    for k in ck1:
        assert ck1[k].shape == ck2[k].shape, k
        if "prior_state" in k:
            assert torch.equal(ck1[k], ck2[k]), k
    # the first iteration: same weights, same images -> close losses
    first1 = next(r for r in m1 if r.get("iteration") == 0 and "total_loss" in r)
    first2 = next(r for r in m2 if r.get("iteration") == 0 and "total_loss" in r)
    for key in ("total_loss", "loss_cls", "loss_box_reg"):
        assert first2[key] == pytest.approx(first1[key], rel=0.15), key
    # both evaluated the final model (all APs NaN after 2 iterations is fine: compared)
    assert _results(out1).keys() == _results(out2).keys()


def test_two_process_evaluation_equals_one_process(tmp_path):
    out = tmp_path / "p2"
    keep_all = "model.test_score_thresh=0.0"  # 2 iterations: keep low scores to score them
    _run(["--config-file", DEMO, "train.max_iter=2", "train.eval_period=0", keep_all,
          f"train.output_dir={out}"] + COMMON, tmp_path, procs=2)
    two = _results(out)
    assert not math.isnan(two["bbox"]["AP50"])
    _run(["--config-file", DEMO, "--eval-only", keep_all,
          f"train.init_checkpoint={out / 'model_final.pth'}",
          f"train.output_dir={tmp_path / 'eval1'}"] + COMMON, tmp_path, procs=1)
    assert _same(_results(tmp_path / "eval1"), two)
