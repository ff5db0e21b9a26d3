"""Training and evaluation loops for LazyConfig configs."""
from .lazy_train import build_model, do_test, do_train, load_config
