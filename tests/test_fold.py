"""scratchdet.export.fold_batchnorm: BatchNorm folded into the convolution before it gives
the same outputs and detections, for each kind of BatchNorm and each way scratchdet's
modules apply it (Detectron2's Conv2d norm, a conv then a BatchNorm in a Sequential, the
per-level CycleBatchNormList of Detectron2's RetinaNet and FCOS heads); the folded
detectors trace, script and run in ONNX Runtime with the eager model's detections. The
BatchNorms carry random statistics and affine parameters (``perturb_batchnorm``): a fresh
one is the identity, and folding it would prove nothing."""
import copy

import cv2
import pytest
import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import (
    Conv2d, CycleBatchNormList, FrozenBatchNorm2d, NaiveSyncBatchNorm, ShapeSpec)
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.utils.testing import assert_instances_allclose, convert_scripted_instances

from scratchdet.export import (
    CycleSequential, batchnorm_modules, canonical_order, export_onnx, export_scripting,
    export_tracing, fold_batchnorm, perturb_batchnorm, run_onnx)
from test_export import coco_image, demo_model, eager_instances

pytestmark = pytest.mark.usefixtures("one_thread")

BATCHNORMS = {
    "BatchNorm2d": nn.BatchNorm2d,
    "SyncBatchNorm": nn.SyncBatchNorm,
    "NaiveSyncBatchNorm": NaiveSyncBatchNorm,
    "FrozenBatchNorm2d": FrozenBatchNorm2d,
}
# the demo detector, its Sampling-Free twin, ScratchDet300, Sampling-Free Faster R-CNN and
# FCOS (whose head has a CycleBatchNormList too)
FOLDED = ["root_resnet_retinanet", "sf_retinanet", "scratchdet300", "sf_faster_rcnn", "sf_fcos"]


def perturbed(module: nn.Module, seed: int = 0) -> nn.Module:
    assert perturb_batchnorm(module, seed) > 0
    return module.eval()


@pytest.fixture(scope="module")
def images(coco_mini):
    """Two coco_mini val images at the shapes demo's size (160 x 160) and another."""
    return coco_image(coco_mini, 0, (160, 160)), coco_image(coco_mini, 1, (192, 160))


@pytest.mark.parametrize("kind", sorted(BATCHNORMS))
@pytest.mark.parametrize("bias, groups", [(False, 1), (True, 2)])
def test_conv2d_norm_folds_exactly(kind, bias, groups):
    """Detectron2's Conv2d (conv, norm, activation) and nn.Conv2d then the BatchNorm in a
    Sequential: same output, the norm gone."""
    torch.manual_seed(0)
    conv = Conv2d(4, 6, 3, padding=1, bias=bias, groups=groups, norm=BATCHNORMS[kind](6),
                  activation=nn.ReLU())
    seq = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, bias=bias, groups=groups),
                        BATCHNORMS[kind](6), nn.ReLU())
    x = torch.randn(2, 4, 9, 11)
    for m in (conv, seq):
        perturbed(m)
        with torch.no_grad():
            want = m(x)
            got = fold_batchnorm(m)(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert batchnorm_modules(m) == []
    assert conv.norm is None and isinstance(conv.activation, nn.ReLU)
    assert isinstance(seq[1], nn.Identity) and isinstance(seq[2], nn.ReLU)


def test_batchnorm_not_after_a_conv_or_without_statistics_stays():
    """A BatchNorm after an activation, or normalising by batch statistics in eval mode
    (track_running_stats=False), cannot fold and is left as it is."""
    seq = perturbed(nn.Sequential(
        Conv2d(3, 4, 1, activation=nn.ReLU()), nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)))
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        want = seq(x)
        got = fold_batchnorm(seq)(x)
    torch.testing.assert_close(got, want)
    assert batchnorm_modules(seq) == [("1", "BatchNorm2d"), ("3", "BatchNorm2d")]


def _retinanet_head(norm="BN"):
    torch.manual_seed(0)
    head = RetinaNetHead(input_shape=[ShapeSpec(channels=8)] * 3, num_classes=3,
                         num_anchors=2, conv_dims=[8, 8], norm=norm)
    return perturbed(head)


def test_cycle_batchnorm_list_folds_into_per_level_convs():
    """RetinaNetHead(norm="BN"): one BatchNorm per level after convs shared by the levels.
    Folded, each subnet is a CycleSequential of per-level folded convs: the same outputs
    on every level, over several forwards (the cycle stays in step), and scripted."""
    head = _retinanet_head()
    features = [torch.randn(1, 8, s, s) for s in (12, 6, 3)]
    with torch.no_grad():
        want = head(features)
        folded = fold_batchnorm(copy.deepcopy(head))
        outs = [folded(features) for _ in range(2)] + [torch.jit.script(folded)(features)]
    assert batchnorm_modules(folded) == []
    assert isinstance(folded.cls_subnet, CycleSequential) and len(folded.cls_subnet) == 3
    for got in outs:
        for a, b in zip(want[0] + want[1], got[0] + got[1]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_cycle_batchnorm_list_stays_without_split_levels():
    head = fold_batchnorm(_retinanet_head(), split_levels=False)
    assert [t for _, t in batchnorm_modules(head)] == ["CycleBatchNormList"] * 4
    assert all(isinstance(m, CycleBatchNormList) for m in (head.cls_subnet[1],
                                                          head.bbox_subnet[4]))


def test_shared_frozen_batchnorm_in_a_head_folds():
    """RetinaNetHead with a BatchNorm shared by the levels (norm="FrozenBN"): a plain
    conv-then-BatchNorm Sequential, folded in place."""
    head = _retinanet_head("FrozenBN")
    features = [torch.randn(1, 8, s, s) for s in (8, 4)] + [torch.randn(1, 8, 2, 2)]
    with torch.no_grad():
        want = head(features)
        got = fold_batchnorm(head)(features)
    assert batchnorm_modules(head) == []
    for a, b in zip(want[0] + want[1], got[0] + got[1]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_perturbed_batchnorm_changes_the_detections(images):
    """The check below is not vacuous: random statistics change the detector's output."""
    model = demo_model("scratchdet300")
    before = eager_instances(model, images[0])
    after = eager_instances(perturbed(model), images[0])
    assert not torch.allclose(before.scores[:10], after.scores[:10])


@pytest.mark.parametrize("family", FOLDED)
def test_folded_detector_gives_the_eager_detections(family, images):
    """Every BatchNorm of the demo detectors folds (none is left, CycleBatchNormLists
    included) and the detections stay (up to the order of equal scores)."""
    model = perturbed(demo_model(family))
    before = len(batchnorm_modules(model))
    folded = fold_batchnorm(copy.deepcopy(model))
    assert before > 0 and batchnorm_modules(folded) == []
    for image in images:
        eager = eager_instances(model, image)
        assert len(eager) > 0
        assert_instances_allclose(canonical_order(eager),
                                  canonical_order(eager_instances(folded, image)), rtol=1e-4)


@pytest.mark.parametrize("family", ["root_resnet_retinanet", "scratchdet300"])
def test_folded_detector_traces_and_runs_in_onnxruntime_with_the_eager_detections(
        family, images, tmp_path):
    """The folded model traced on one size (TorchScript) and exported to ONNX (run in ONNX
    Runtime) gives the unfolded eager model's detections on another size."""
    model = perturbed(demo_model(family))
    folded = fold_batchnorm(copy.deepcopy(model))
    trace_image, other = images
    traced, adapter = export_tracing(folded, [{"image": trace_image}])
    path = str(tmp_path / "model.onnx")
    onnx_adapter = export_onnx(folded, [{"image": trace_image}], path)
    for image in (trace_image, other):
        eager = canonical_order(eager_instances(model, image))
        with torch.no_grad():
            got = adapter.outputs_schema(traced(image))[0]["instances"]
        assert_instances_allclose(eager, canonical_order(got), rtol=1e-4, size_as_tensor=True)
        got = run_onnx(path, onnx_adapter, image)[0]["instances"]
        assert_instances_allclose(eager, canonical_order(got), rtol=1e-4, size_as_tensor=True)


def test_folded_yacs_demo_scripts_with_the_eager_detections(images):
    """The YAML twin of the demo detector, folded (per-level CycleSequential subnets),
    scripts with scripting_with_instances."""
    model = perturbed(demo_model("root_resnet_retinanet", yacs=True))
    scripted = export_scripting(fold_batchnorm(copy.deepcopy(model)))
    image = images[1]
    with torch.no_grad():
        got = detector_postprocess(convert_scripted_instances(scripted([{"image": image}])[0]),
                                   image.shape[1], image.shape[2])
    assert_instances_allclose(canonical_order(eager_instances(model, image)),
                              canonical_order(got), rtol=1e-4)


def test_export_tool_fold_bn_exports_the_eager_detections(images, tmp_path):
    """tools/export_model.py --fold-bn on a checkpoint with random BatchNorm statistics:
    the folded ONNX model gives the checkpoint's eager detections on the sample image.
    (At the full 640 x 426 the random model's top scores tie to 1e-6, closer than ONNX
    Runtime's rounding, with or without folding: the sample is the 160 x 160 image.)"""
    from test_export_tool import DEMO, LOW_THRESH, _tool

    model = perturbed(demo_model("sf_retinanet"))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("demo")
    sample = str(tmp_path / "sample.png")  # lossless: the image the other tests use
    cv2.imwrite(sample, images[0].numpy().transpose(1, 2, 0))
    results = _tool().main(["--config-file", DEMO + ".py", "--weights",
                            str(tmp_path / "demo.pth"), "--format", "onnx", "--fold-bn",
                            "--sample-image", sample, "--output", str(tmp_path / "out")]
                           + LOW_THRESH[".py"])
    eager, got = results["sample"]
    assert len(eager) > 0
    assert_instances_allclose(eager, got, size_as_tensor=True, rtol=1e-4)
