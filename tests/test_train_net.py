"""End to end: training lowers the loss, train_net.py on real COCO, two GLOO processes."""
import json
import os
import subprocess
import sys

import numpy as np
import torch

from detectron2.engine import SimpleTrainer
from detectron2.config import instantiate
from detectron2.utils.events import EventStorage

from scratchdet.engine import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "shapes", "scratchdet_root_resnet18_fpn_demo.py")
SF_DEMO = os.path.join(REPO, "configs", "shapes", "sampling_free_root_resnet18_fpn_demo.py")
COCO_MINI = os.path.join(REPO, "configs", "coco_mini", "scratchdet_root_resnet18_fpn_coco_mini.py")


def _run(args, tmp_path, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(REPO, "train_net.py")] + args,
                       cwd=str(tmp_path), env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p


def _metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_short_training_on_embedded_data_lowers_the_loss():
    cfg = load_config(DEMO)
    cfg.dataloader.train.dataset.names = "scratchdet_shapes_val"  # 200 images suffice
    cfg.dataloader.train.total_batch_size = 4
    cfg.dataloader.train.num_workers = 0
    torch.manual_seed(0)
    np.random.seed(0)  # the sampler's seed and the flips come from numpy
    model = instantiate(cfg.model).train()
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    for g in optim.param_groups:
        g["lr"] = 0.02
    trainer = SimpleTrainer(model, instantiate(cfg.dataloader.train), optim)
    totals = []
    with EventStorage(0) as storage:
        for it in range(60):
            storage.iter = trainer.iter = it
            trainer.run_step()
            totals.append(storage.history("total_loss").latest())
    first, last = sum(totals[:5]) / 5, sum(totals[-5:]) / 5
    assert all(map(lambda v: v == v, totals))
    print(f"loss {first:.3f} -> {last:.3f}")
    assert last < 0.65 * first, (first, last)


def test_train_net_trains_and_evaluates_on_real_coco(tmp_path, coco_mini):
    out = tmp_path / "out"
    # 6 iterations from scratch leave every score near the initial prior (0.01): keep
    # all detections so that COCO evaluation really runs on them
    p = _run(["--config-file", COCO_MINI, "train.max_iter=6", "train.eval_period=6",
              "model.test_score_thresh=0.0",
              "train.log_period=2", f"train.output_dir={out}"], tmp_path)
    records = _metrics(out)
    evals = [r for r in records if "bbox/AP" in r]
    assert evals and evals[-1]["iteration"] >= 5
    assert max(r["iteration"] for r in records if "total_loss" in r) == 5
    for k in ["AP", "AP50", "AP75", "APs", "APm", "APl"]:
        assert f"bbox/{k}" in evals[-1]
    assert any("total_loss" in r for r in records)
    assert os.path.isfile(out / "model_final.pth")
    assert "Evaluation results for bbox" in p.stdout + p.stderr
    # the same checkpoint evaluates with --eval-only
    p = _run(["--config-file", COCO_MINI, "--eval-only", "model.test_score_thresh=0.0",
              f"train.init_checkpoint={out / 'model_final.pth'}",
              f"train.output_dir={tmp_path / 'eval'}"], tmp_path)
    log = p.stdout + p.stderr
    assert "Evaluation results for bbox" in log and "copypaste: nan" not in log
    # the standard COCO metrics, per category included, land in the output directory
    with open(tmp_path / "eval" / "evaluation_results.json") as f:
        rec = json.load(f)
    bbox = rec["results"]["bbox"]
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(bbox)
    assert len([k for k in bbox if k.startswith("AP-")]) == 80
    assert rec["checkpoint"] == str(out / "model_final.pth") and rec["score_thresholds"] == {}
