"""Training, evaluation and single-image inference for LazyConfig (and yacs) configs."""
from .lazy_train import build_model, do_test, do_train, load_config
from .predictor import LazyPredictor, build_predictor
from .yacs_train import ScratchDetTrainer, load_yacs_config

__all__ = ["build_model", "do_test", "do_train", "load_config", "LazyPredictor", "build_predictor",
           "ScratchDetTrainer", "load_yacs_config"]
