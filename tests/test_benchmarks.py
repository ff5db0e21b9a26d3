"""The benchmarks (python -m benchmarks.X) run in --quick mode and write a complete JSON
record. Nothing here asserts a timing: only that every ratio is a finite positive number,
the repeats are recorded and the schema is there."""
import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks.common import COMPARISON_KEYS, RECORD_KEYS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPECTED = {
    "train_step": {"retinanet_coco_mini", "retinanet_R50_FPN", "faster_rcnn_R50_FPN",
                   "cascade_rcnn_R50_FPN", "fcos_R50_FPN", "mask_rcnn_R50_FPN",
                   "root_resnet34_vs_resnet34"},
    "prior": {"retinanet_R50_FPN_coco", "coco_mini"},
    "inference": {"predictor_adaptive_vs_fixed", "postprocess_adaptive_vs_fixed",
                  "root_resnet34_vs_resnet34"} | {
                      f"{m}_{v}_vs_eager" for m in ("demo", "scratchdet300")
                      for v in ("folded", "torchscript", "onnxruntime")},
}


def _run(name, tmp_path, *extra):
    out = tmp_path / f"{name}.json"
    # the session's SCRATCHDET_CACHE (conftest) and everything else pass through; one
    # thread keeps the quick runs steady on a shared machine
    p = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--threads", "1",
         "--output", str(out), *extra],
        cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    with open(out) as f:
        return json.load(f), p.stdout


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_quick_benchmark_writes_a_complete_record(name, tmp_path):
    rec, stdout = _run(name, tmp_path)
    assert set(RECORD_KEYS) <= set(rec), set(RECORD_KEYS) - set(rec)
    assert rec["benchmark"] == name
    assert rec["settings"]["quick"] is True and rec["settings"]["device"] == rec["device"]["type"]
    assert "--quick" in rec["command"] and rec["argv"]
    assert rec["device"]["name"] and rec["device"]["torch_num_threads"] == 1
    assert rec["versions"]["torch"] and rec["versions"]["detectron2"]
    assert rec["repeats"] == 2

    comps = rec["comparisons"]
    assert {c["name"] for c in comps} == EXPECTED[name]
    for c in comps:
        assert set(COMPARISON_KEYS) <= set(c), (c["name"], set(COMPARISON_KEYS) - set(c))
        n = len(c["ratio_per_repeat"])
        if c["metric"] == "peak_memory_mb" and rec["device"]["type"] == "cpu":
            assert n == rec["settings"]["memory_repeats"]
        else:
            assert n == rec["repeats"], c["name"]
        assert len(c["a_per_repeat"]) == len(c["b_per_repeat"]) == n == c["ratio"]["n"]
        for v in c["a_per_repeat"] + c["b_per_repeat"] + c["ratio_per_repeat"]:
            assert _positive(v), (c["name"], c["metric"], v)
        r = c["ratio"]
        assert all(_positive(r[k]) for k in ("median", "min", "max")), (c["name"], r)
        assert r["min"] <= r["median"] <= r["max"]
        if c["target"] is None:
            assert c["status"] is None
        else:
            assert c["status"] == ("PASS" if r["median"] <= c["target"] else "FAIL")
        assert c["name"] in stdout  # the printed table

    assert "A/B median [min, max]" in stdout
    if name == "train_step":
        timed = {c["name"] for c in comps if c["metric"] == "train_step_seconds"}
        assert timed == EXPECTED[name]
        assert any(c["metric"] == "peak_memory_mb" for c in comps)
        assert set(rec["variants"]) == EXPECTED[name]
    elif name == "prior":
        for c in comps:
            if c["metric"] == "seconds_per_pass":
                assert c["target"] == 0.05
                assert all(x["images"] >= 1 for x in c["raw"]["a"] + c["raw"]["b"])
    else:
        assert rec["settings"]["weights"]["trained_here"] is True
        assert rec["settings"]["adaptive_thresholds"]
        _check_export_section(rec, stdout)


def _check_export_section(rec, stdout):
    """benchmarks.inference's export section: per model, every BatchNorm folded; per
    variant, its detections equal eager's on every image (a check, not a timing)."""
    export = rec["settings"]["export"]
    assert set(export["models"]) == {"demo", "scratchdet300"}
    for m in export["models"].values():
        assert m["batchnorms_before_folding"] > 0 and m["batchnorms_left_after_folding"] == []
        assert len(m["eager_detections_per_image"]) == rec["settings"]["num_images"]
        assert all(n > 0 for n in m["eager_detections_per_image"])
    comps = [c for c in rec["comparisons"] if c["name"].endswith("_vs_eager")]
    assert len(comps) == 6
    for c in comps:
        assert c["target"] == (0.8 if "onnxruntime" in c["name"] else None)
        d = c["detections"]
        assert d["same_as_eager"] is True, (c["name"], c["raw"]["detections"])
        assert d["images_same"] == d["images"] == rec["settings"]["num_images"]
        assert len(c["raw"]["detections"]) == d["images"]
        assert c["check"] in stdout


def test_inference_export_section_runs_alone(tmp_path):
    """``--sections export``: no brief training, only the deployment comparisons."""
    rec, stdout = _run("inference", tmp_path, "--sections", "export")
    assert rec["settings"]["sections"] == ["export"] and rec["settings"]["weights"] is None
    assert {c["name"] for c in rec["comparisons"]} == {
        n for n in EXPECTED["inference"] if n.endswith("_vs_eager")}
    _check_export_section(rec, stdout)
