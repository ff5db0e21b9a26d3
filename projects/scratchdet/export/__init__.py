"""TorchScript and ONNX export of scratchdet's detectors through Detectron2's export API
(:mod:`detectron2.export`): tracing with ``TracingAdapter``, scripting with
``scripting_with_instances``, ONNX through tracing, and BatchNorm folded into the
convolutions before them (:func:`fold_batchnorm`). See ``tools/export_model.py``."""
from .core import (
    SCRIPTING_FIELDS,
    canonical_order,
    detection_differences,
    export_onnx,
    export_scripting,
    export_tracing,
    load_traced,
    onnx_runner,
    run_onnx,
    tracing_inference,
)
from .fold import CycleSequential, batchnorm_modules, fold_batchnorm, perturb_batchnorm

__all__ = ["SCRIPTING_FIELDS", "CycleSequential", "batchnorm_modules", "canonical_order",
           "detection_differences", "export_onnx", "export_scripting", "export_tracing", "fold_batchnorm",
           "load_traced", "onnx_runner", "perturb_batchnorm", "run_onnx", "tracing_inference"]
