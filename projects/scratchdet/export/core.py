"""Export helpers shaped like Detectron2's ``tools/deploy/export_model.py``.

Every function takes a model in eval mode and single-image inputs in Detectron2's format
(``[{"image": (3, H, W) tensor}]``, the image already resized by the test mapper).
"""
import os
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

from detectron2.export import TracingAdapter, dump_torchscript_IR, scripting_with_instances
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Boxes, Instances

from .scripting import scriptable_copy

__all__ = ["SCRIPTING_FIELDS", "canonical_order", "detection_differences", "tracing_inference", "export_tracing",
           "load_traced", "export_scripting", "export_onnx", "onnx_runner", "run_onnx"]

# Instances fields a scripted model may produce (Detectron2's export_model.py's).
SCRIPTING_FIELDS = {
    "proposal_boxes": Boxes,
    "objectness_logits": Tensor,
    "pred_boxes": Boxes,
    "scores": Tensor,
    "pred_classes": Tensor,
    "pred_masks": Tensor,
}


def canonical_order(instances: Instances) -> Instances:
    """``instances`` reordered by decreasing score, equal scores by their boxes (both
    rounded: ONNX Runtime's values differ from PyTorch's in the last bits). Equal scores
    (constant image regions give equal features) have no defined order in PyTorch's
    topk, which ONNX Runtime's TopK orders by index: detections compare row by row
    after it."""
    boxes = instances.pred_boxes.tensor.double()
    key = torch.stack([-instances.scores.double() * 1e5, *(boxes * 10).unbind(1)], dim=1)
    order = sorted(range(len(instances)), key=lambda i: tuple(key[i].round().tolist()))
    return instances[torch.as_tensor(order, dtype=torch.long)]


def detection_differences(eager: Instances, got: Instances) -> Dict:
    """Both Instances in :func:`canonical_order` (keys ``eager``, ``got``) and, over their
    first min(len) rows, the largest box and score differences (0.0 without rows) and
    whether the classes are equal (``box_diff``, ``score_diff``, ``same_classes``)."""
    eager, got = canonical_order(eager), canonical_order(got)
    n = min(len(eager), len(got))
    out = {"eager": eager, "got": got, "box_diff": 0.0, "score_diff": 0.0,
           "same_classes": True}
    if n:
        out["box_diff"] = float((eager.pred_boxes.tensor[:n]
                                 - got.pred_boxes.tensor[:n]).abs().max())
        out["score_diff"] = float((eager.scores[:n] - got.scores[:n]).abs().max())
        out["same_classes"] = bool(torch.equal(eager.pred_classes[:n], got.pred_classes[:n]))
    return out


def tracing_inference(model) -> Optional[Callable]:
    """The ``inference_func`` of ``TracingAdapter``: an R-CNN's ``inference`` without the
    postprocessing (which keeps ROI masks, as Detectron2's export_model.py); None (the
    model called directly, postprocessing included) for the dense detectors."""
    if isinstance(model, GeneralizedRCNN):
        def inference(model, inputs):
            return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]
        return inference
    return None


def _adapter(model, inputs: List[Dict]) -> TracingAdapter:
    return TracingAdapter(model, inputs, tracing_inference(model))


def export_tracing(model, inputs: List[Dict], output: Optional[str] = None):
    """
    ``torch.jit.trace`` of ``TracingAdapter(model, inputs)``: a function of the (3, H, W)
    image tensor returning the flattened outputs (``adapter.outputs_schema`` rebuilds the
    Instances). Saved as ``output/model.ts`` (with its IR dump) when ``output`` is given.

    Returns (traced module, adapter).
    """
    adapter = _adapter(model, inputs)
    with torch.no_grad():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    if output:
        os.makedirs(output, exist_ok=True)
        traced.save(os.path.join(output, "model.ts"))
        dump_torchscript_IR(traced, output)
    return traced, adapter


def load_traced(path: str, model, inputs: List[Dict]):
    """A saved trace and a function of one (3, H, W) image to its list of output dicts
    (``[{"instances": Instances}]``), rebuilt with the adapter's output schema (the
    schema is not saved: it is recomputed by tracing ``inputs`` through ``model``)."""
    traced = torch.jit.load(path)
    adapter = _adapter(model, inputs)
    with torch.no_grad():
        adapter(*adapter.flattened_inputs)  # sets outputs_schema

    def run(image: Tensor):
        with torch.no_grad():
            return adapter.outputs_schema(traced(image))
    return traced, run


def export_scripting(model, output: Optional[str] = None):
    """``scripting_with_instances(model, SCRIPTING_FIELDS)``; its ``inference(inputs,
    do_postprocess=False)`` (R-CNNs) or ``forward(inputs)`` (dense detectors: the
    un-postprocessed Instances when scripted) returns Instances in the input image's
    coordinates. Scripts a copy of the model (:func:`scriptable_copy`). Saved as
    ``output/model.ts`` when ``output`` is given."""
    scripted = scripting_with_instances(scriptable_copy(model), SCRIPTING_FIELDS)
    if output:
        os.makedirs(output, exist_ok=True)
        scripted.save(os.path.join(output, "model.ts"))
        dump_torchscript_IR(scripted, output)
    return scripted


def export_onnx(model, inputs: List[Dict], path: str, opset: int = 17):
    """ONNX through tracing (``torch.onnx.export`` of the ``TracingAdapter``, TorchScript
    exporter: ``dynamo=False``), with the image's height and width as dynamic axes.
    Returns the adapter (its ``outputs_schema`` rebuilds the Instances)."""
    adapter = _adapter(model, inputs).eval()  # export restores this mode on the model
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(adapter, adapter.flattened_inputs, path, opset_version=opset,
                          dynamo=False, input_names=["image"],
                          dynamic_axes={"image": {1: "height", 2: "width"}})
    return adapter


def onnx_runner(path: str, adapter: TracingAdapter) -> Callable:
    """A function running the ONNX model in ONNX Runtime (CPU, one session) on a (3, H, W)
    image, its outputs rebuilt into Detectron2's format (``[{"instances": ...}]``) with
    ``adapter.outputs_schema``."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(image: Tensor) -> List[Dict]:
        outs = session.run(None, {name: image.numpy()})
        return adapter.outputs_schema([torch.from_numpy(o) for o in outs])
    return run


def run_onnx(path: str, adapter: TracingAdapter, image: Tensor) -> List[Dict]:
    """:func:`onnx_runner` on one image."""
    return onnx_runner(path, adapter)(image)
