"""TorchScript and ONNX export of scratchdet's detectors through Detectron2's export API
(:mod:`detectron2.export`): tracing with ``TracingAdapter``, scripting with
``scripting_with_instances``, ONNX through tracing. See ``tools/export_model.py``."""
from .core import (
    SCRIPTING_FIELDS,
    canonical_order,
    export_onnx,
    export_scripting,
    export_tracing,
    load_traced,
    onnx_runner,
    run_onnx,
    tracing_inference,
)

__all__ = ["SCRIPTING_FIELDS", "canonical_order", "export_onnx", "export_scripting",
           "export_tracing", "load_traced", "onnx_runner", "run_onnx", "tracing_inference"]
