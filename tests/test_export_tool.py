"""tools/export_model.py: exports a checkpoint of a demo config (random weights) to
TorchScript (tracing, scripting of the YAML twin) and ONNX with the eager detections on
the sample image, prints matching APs with --run-eval, and refuses a checkpoint that
does not fit the config."""
import importlib.util
import os

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.testing import assert_instances_allclose

from scratchdet.engine import load_config
from scratchdet.engine.checkpoint import CheckpointMismatchError
from scratchdet.engine.lazy_train import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "shapes", "sampling_free_root_resnet18_fpn_demo")
SSD = os.path.join(REPO, "configs", "shapes", "scratchdet300_root_resnet18_demo.py")


def _tool():
    spec = importlib.util.spec_from_file_location(
        "export_model", os.path.join(REPO, "tools", "export_model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _checkpoint(config: str, out, name: str) -> str:
    torch.manual_seed(0)
    model = build_model(load_config(config, ["train.device=cpu"]))
    DetectionCheckpointer(model, save_dir=str(out)).save(name)
    return str(out / f"{name}.pth")


@pytest.fixture(scope="module")
def demo_weights(tmp_path_factory):
    return _checkpoint(DEMO + ".py", tmp_path_factory.mktemp("export_tool"), "demo")


# a random head scores about its prior (0.01): a lower threshold gives detections
LOW_THRESH = {".py": ["model.test_score_thresh=0.008"],
              ".yaml": ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.008"]}


@pytest.mark.parametrize("ext, fmt, method", [(".py", "torchscript", "tracing"),
                                              (".yaml", "torchscript", "scripting"),
                                              (".py", "onnx", "tracing")])
def test_exports_with_the_eager_detections_on_the_sample_image(
        demo_weights, coco_mini, tmp_path, ext, fmt, method):
    results = _tool().main(["--config-file", DEMO + ext, "--weights", demo_weights,
                            "--format", fmt, "--export-method", method,
                            "--output", str(tmp_path)] + LOW_THRESH[ext])
    assert os.path.isfile(tmp_path / ("model.onnx" if fmt == "onnx" else "model.ts"))
    eager, got = results["sample"]
    assert len(eager) > 0
    if method == "scripting":
        assert_instances_allclose(eager, got)
    else:
        assert_instances_allclose(eager, got, size_as_tensor=True, rtol=1e-4)


def test_run_eval_prints_the_eager_ap_for_the_exported_model(demo_weights, tmp_path, capsys):
    results = _tool().main(["--config-file", DEMO + ".py", "--weights", demo_weights,
                            "--output", str(tmp_path), "--run-eval"] + LOW_THRESH[".py"])
    eager, exported = results["eager"]["bbox"], results["exported"]["bbox"]
    assert exported["AP"] == pytest.approx(eager["AP"], abs=1e-6)
    assert exported["AP50"] == pytest.approx(eager["AP50"], abs=1e-6)
    assert "exported bbox AP" in capsys.readouterr().out


def test_refuses_a_checkpoint_that_does_not_fit_the_config(tmp_path):
    weights = _checkpoint(SSD, tmp_path, "ssd")
    with pytest.raises(CheckpointMismatchError):
        _tool().main(["--config-file", DEMO + ".py", "--weights", weights,
                      "--output", str(tmp_path / "out")])
