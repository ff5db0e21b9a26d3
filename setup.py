"""Installs the package ``scratchdet`` from ``projects/scratchdet``.

Detectron2 is deliberately not a hard requirement: install this into an environment that
already has Detectron2 (the official one on a GPU box, or ``sal-detectron2`` from
``requirements.txt`` as the Makefile does).
"""
from setuptools import setup

setup(
    name="scratchdet",
    version="0.1.0",
    description="ScratchDet (Root-ResNet) and Sampling-Free detectors for Detectron2",
    packages=[
        "scratchdet",
        "scratchdet.backbone",
        "scratchdet.data",
        "scratchdet.engine",
        "scratchdet.modeling",
        "scratchdet.sampling_free",
    ],
    package_dir={"scratchdet": "projects/scratchdet"},
    python_requires=">=3.8",
    install_requires=["fvcore", "numpy", "opencv-python-headless", "pycocotools"],
)
