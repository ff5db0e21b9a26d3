"""scratchdet: object detectors trained from scratch, without sampling heuristics.

Importing the package registers its backbones (``BACKBONE_REGISTRY``), anchor generators
(``ANCHOR_GENERATOR_REGISTRY``) and the embedded datasets (``DatasetCatalog``).
"""
from . import backbone, data, evaluation, modeling, sampling_free  # noqa: F401  (registration)
from .config import add_scratchdet_config

__version__ = "0.1.0"
__all__ = ["add_scratchdet_config", "backbone", "data", "evaluation", "modeling", "sampling_free"]
