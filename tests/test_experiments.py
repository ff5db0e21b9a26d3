"""The experiments/ scripts in --quick mode: each runs end to end in a subprocess and
writes a results.json of the documented schema and a readable PNG figure. No timing
assertions (the quick sizes are smoke tests, not results)."""
import json
import math
import os
import subprocess
import sys

import cv2
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RUN_KEYS = {"variant", "label", "lr", "seed", "max_iter", "iterations", "diverged",
            "diverged_at", "metrics", "AP", "APs", "null_reasons", "ap_null_reason",
            "sec_per_iter", "train_seconds", "curves"}
TOP_KEYS = {"experiment", "schema_version", "command", "mode", "settings", "environment",
            "runs", "summary_columns", "summary", "figure", "notes", "wall_seconds"}


def _strict_json(path):
    def no_constant(name):
        raise ValueError(f"{path}: non-standard JSON constant {name}")

    with open(path) as f:
        return json.load(f, parse_constant=no_constant)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def run_quick(name, tmp_path, *args, record=None):
    """``python -m experiments.NAME --quick ARGS``; ``record``: the experiment's name in
    its JSON and figure (``NAME_ssd`` with ``--detector ssd``)."""
    record = record or name
    out = tmp_path / record
    # SCRATCHDET_CACHE from conftest: the session's generated data and prior cache; one
    # thread, as the other subprocess tests (steadier when the CPU is shared)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(
        [sys.executable, "-m", f"experiments.{name}", "--quick", "--output", str(out), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    assert "results:" in p.stdout, p.stdout[-2000:]
    data = _strict_json(out / "results.json")
    img = cv2.imread(str(out / f"{record}.png"))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 100
    check_common(data, name, record)
    return data


def check_common(data, name, record=None):
    record = record or name
    assert TOP_KEYS <= set(data), TOP_KEYS - set(data)
    assert data["experiment"] == record
    assert data["mode"] == "quick"
    assert data["command"].startswith(f"python -m experiments.{name} ")
    assert "--quick" in data["command"]
    assert data["figure"] == f"{record}.png"
    s = data["settings"]
    assert s["iterations"] > 0 and s["eval_images"] > 0 and isinstance(s["eval_dataset"], str)
    assert data["runs"] and data["summary"]
    for row in data["summary"]:
        assert set(data["summary_columns"]) <= set(row), (data["summary_columns"], row)
    for r in data["runs"]:
        assert RUN_KEYS <= set(r), RUN_KEYS - set(r)
        assert isinstance(r["variant"], str) and _is_num(r["lr"]) and isinstance(r["seed"], int)
        assert r["max_iter"] == s["iterations"]
        if r["diverged"]:
            assert isinstance(r["diverged_at"], int) and r["iterations"] == r["diverged_at"]
        else:
            assert r["iterations"] == r["max_iter"]
        # AP values: numbers, or null with a reason
        assert set(r["metrics"]) == set(METRICS)
        for m in METRICS:
            v = r["metrics"][m]
            if v is None:
                assert isinstance(r["null_reasons"].get(m), str) and r["null_reasons"][m]
            else:
                assert _is_num(v) and 0.0 <= v <= 100.0
        assert r["AP"] == r["metrics"]["AP"] and r["APs"] == r["metrics"]["APs"]
        assert (r["AP"] is None) == (r["ap_null_reason"] is not None)
        assert r["sec_per_iter"] is None or r["sec_per_iter"] > 0
        if r["curves"] is None:  # a record derived from another run's training
            assert r.get("derived_from")
            continue
        c = r["curves"]
        n = r["iterations"]
        assert c["iteration"] == list(range(n))
        for key in ("total_loss", "lr", "step_seconds"):
            assert len(c[key]) == n, key
        # every model logs a classification and a box loss, under its own names (a
        # cascade per stage, FCOS loss_fcos_*); all logged every iteration
        losses = [k for k in c if k.startswith("loss") and k != "loss_cls_unscaled"]
        assert any("cls" in k for k in losses) and any("box" in k or "loc" in k for k in losses)
        for key in ["total_loss"] + losses:
            assert len(c[key]) == n and all(_is_num(v) for v in c[key]), (key, c[key])
        assert all(_is_num(v) and v > 0 for v in c["lr"])


def test_bn_from_scratch_quick(tmp_path):
    data = run_quick("bn_from_scratch", tmp_path)
    assert data["settings"]["detector"] == "retinanet"
    check_bn_runs(data)


def test_bn_from_scratch_ssd_quick(tmp_path):
    """The BN question on the paper's detector: the SSD demo config, MultiBox loss."""
    data = run_quick("bn_from_scratch", tmp_path, "--detector", "ssd", "--iters", "8",
                     record="bn_from_scratch_ssd")
    s = data["settings"]
    assert s["detector"] == "ssd"
    assert s["config"] == "configs/shapes/scratchdet300_root_resnet18_demo.py"
    assert s["variants"]["bn_backbone"]["overrides"] == ["model.head.norm="]
    check_bn_runs(data)


def check_bn_runs(data):
    lrs = data["settings"]["learning_rates"]
    assert len(data["runs"]) == 3 * len(lrs) and len(data["summary"]) == len(data["runs"])
    assert {r["variant"] for r in data["runs"]} == {"bn_all", "bn_backbone", "no_bn"}
    for r in data["runs"]:
        g, ch = r["curves"]["grad_norm"], r["curves"]["grad_change_rel"]
        if r["diverged"]:  # the failing iteration recorded no gradient
            assert g[-1] is None and ch[-1] is None
            g, ch = g[:-1], ch[:-1]
        assert len(g) >= r["iterations"] - 1 and all(_is_num(v) and v > 0 for v in g)
        assert ch[0] is None and all(_is_num(v) for v in ch[1:])
        st = r["grad_norm_stats"]
        for k in ("median", "std_over_mean", "max_over_min", "window_cv_mean",
                  "mean_abs_log_change", "grad_change_rel_median"):
            assert _is_num(st[k]), k
        assert st["windows"]


def test_downsampling_quick(tmp_path):
    from scratchdet.backbone import DOWNSAMPLING_STUDY

    data = run_quick("downsampling", tmp_path)
    assert len(data["runs"]) == len(DOWNSAMPLING_STUDY)
    assert [r["variant"] for r in data["runs"]] == list(DOWNSAMPLING_STUDY)
    assert [row["variant"] for row in data["summary"]] == list(DOWNSAMPLING_STUDY)
    strides = {"resnet18": 4, "no_maxpool": 2, "conv1_stride1": 1, "root_resnet18": 1}
    for r in data["runs"]:
        lay = r["layout"]
        assert lay["stem_stride"] == strides[r["variant"]]
        assert lay["fpn_input_strides"][0] == 4
        assert len(lay["fpn_inputs"]) + lay["extra_levels"] == 5  # p2..p6 for every stem
        assert _is_num(r["sec_per_iter"])


def test_downsampling_ssd_quick(tmp_path):
    """The stems in the paper's detector: six SSD maps from the stride-4 stage."""
    data = run_quick("downsampling", tmp_path, "--detector", "ssd", "--iters", "6",
                     "--studies", "resnet18", "root_resnet18", record="downsampling_ssd")
    assert [r["variant"] for r in data["runs"]] == ["resnet18", "root_resnet18"]
    assert "ssd_inputs" in data["summary_columns"]
    lay = {r["variant"]: r["layout"] for r in data["runs"]}
    assert lay["resnet18"]["ssd_inputs"] == ["res2", "res3", "res4", "res5"]
    assert lay["root_resnet18"]["ssd_inputs"] == ["res4", "res5"]
    assert [len(v["ssd_inputs"]) + v["extra_stages"] for v in lay.values()] == [6, 6]


def test_sampling_quick(tmp_path):
    data = run_quick("sampling", tmp_path)
    seeds = data["settings"]["seeds"]
    variants = ["focal", "sampling_free", "sf_no_guided_scaling", "sf_no_prior_bias",
                "sf_no_adaptive_threshold"]
    assert sorted(r["variant"] for r in data["runs"]) == sorted(variants * len(seeds))
    assert [row["variant"] for row in data["summary"]] == variants
    by = {(r["variant"], r["seed"]): r for r in data["runs"]}
    for seed in seeds:
        sf = by[("sampling_free", seed)]
        assert 0 < sf["prior"]["prior"] < 1
        assert "loss_cls_unscaled" in sf["curves"]
        derived = by[("sf_no_adaptive_threshold", seed)]
        assert derived["curves"] is None
        assert derived["derived_from"] == {"variant": "sampling_free", "seed": seed}
        assert derived["metrics"] == sf["metrics_fixed_0_05"]
        nb = by[("sf_no_prior_bias", seed)]
        assert nb["initial_prior"] == pytest.approx(0.01)
        assert by[("focal", seed)]["prior"] is None
    for row in data["summary"]:
        assert row["seeds"] == len(seeds)
        assert row["AP_mean"] is None or _is_num(row["AP_mean"])


def test_families_quick(tmp_path):
    from experiments.families import FAMILIES

    data = run_quick("families", tmp_path, "--jobs", "2")  # the split and merge too
    seeds = data["settings"]["seeds"]
    assert data["settings"]["families"] == list(FAMILIES)
    assert sorted((r["family"], r["variant"]) for r in data["runs"]) == sorted(
        (f, v) for f in FAMILIES for v in ("stock", "sampling_free") for _ in seeds)
    assert [row["family"] for row in data["summary"]] == list(FAMILIES)
    by = {(r["family"], r["variant"]): r for r in data["runs"]}
    for f in FAMILIES:
        sf, stock = by[(f, "sampling_free")], by[(f, "stock")]
        assert sf["config"].startswith("configs/shapes/sampling_free_")
        assert stock["config"] != sf["config"]
        # the Sampling-Free run is scored at its own threshold and at the stock one
        # (0.05; Detectron2's FCOS: 0.2) in one pass
        assert sf["metrics_fixed"] is not None
        assert sf["fixed_threshold"] == (0.2 if f == "fcos" else 0.05)
    # mask AP is recorded for Mask R-CNN only, box AP for every run
    assert by[("mask_rcnn", "sampling_free")]["metrics_segm"] is not None
    assert all(r["metrics_segm"] is None for r in data["runs"] if r["family"] != "mask_rcnn")
    row = {r["family"]: r for r in data["summary"]}
    assert row["faster_rcnn"]["paper_delta_AP"] == pytest.approx(1.6)
    assert row["mask_rcnn"]["has_masks"] and not row["fcos"]["has_masks"]
    assert row["mask_rcnn"]["paper_delta_maskAP"] == pytest.approx(0.7)
