import logging
import os
import shutil
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


# Generated datasets and prior caches go to a per-session cache unless the caller chose
# one. Set here, when pytest imports this file and before any test module imports
# scratchdet: the default shapes splits fix their directory when they are registered.
_SESSION_CACHE = None
if "SCRATCHDET_CACHE" not in os.environ:
    _SESSION_CACHE = os.environ["SCRATCHDET_CACHE"] = tempfile.mkdtemp(prefix="scratchdet_cache_")


def pytest_unconfigure(config):
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): small forwards are as fast, and on a busy
    2-core machine several OpenMP threads slow them down 20-40x (measured)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def log(caplog):
    """caplog that sees the "scratchdet" loggers even when Detectron2's setup_logger
    made them non-propagating."""
    lg = logging.getLogger("scratchdet")
    lg.addHandler(caplog.handler)
    old = lg.propagate
    lg.propagate = False
    caplog.set_level(logging.INFO, logger="scratchdet")
    yield caplog
    lg.propagate = old
    lg.removeHandler(caplog.handler)


@pytest.fixture(scope="session")
def coco_mini():
    from scratchdet.data import coco_mini_root

    root = coco_mini_root()
    if not os.path.isdir(root):
        pytest.fail(f"coco_mini not found at {root}; set SCRATCHDET_COCO_MINI")
    return root


SF_COCO_MINI = os.path.join(REPO, "configs", "coco_mini", "sampling_free_root_resnet18_fpn_coco_mini.py")


def register_coco(name, json_file, image_root):
    """Register a COCO dataset as ``name`` (scratchdet's checks), replacing any dataset of
    that name registered before."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from scratchdet.data import register_coco_dataset

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_dataset(name, json_file, image_root)


def log_messages(caplog, level):
    """The messages ``caplog`` recorded at exactly ``level``."""
    return [r.getMessage() for r in caplog.records if r.levelno == level]


@pytest.fixture(scope="session")
def sf_coco_mini_run(coco_mini, tmp_path_factory):
    """A Sampling-Free coco_mini detector trained 4 iterations by train_net.py (prior
    counted, adaptive-threshold evaluation at the end): its output directory."""
    import subprocess

    out = tmp_path_factory.mktemp("sf_coco_mini")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", SF_COCO_MINI,
         "train.max_iter=4", "train.eval_period=0", "train.log_period=2",
         f"train.output_dir={out}"],
        cwd=str(out), env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    assert os.path.isfile(out / "model_final.pth")
    return out


@pytest.fixture(scope="session")
def low_threshold_checkpoint(sf_coco_mini_run, coco_mini, tmp_path_factory):
    """The train_net.py checkpoint with a prior (so an adaptive threshold) lowered to the
    median raw score of a val image: 4 iterations leave every score below the real
    prior's threshold, and the comparisons below need detections."""
    import glob

    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import detection_utils as utils

    from scratchdet.engine import LazyPredictor, load_config
    from scratchdet.evaluation import score_floor
    from scratchdet.sampling_free.prior import PriorCounts

    cfg = load_config(SF_COCO_MINI, ["train.device=cpu"])
    pred = LazyPredictor(cfg, str(sf_coco_mini_run / "model_final.pth"))
    first = sorted(glob.glob(os.path.join(coco_mini, "val2017", "*.jpg")))[0]
    img = utils.read_image(first, format="BGR")
    with score_floor(pred.model, torch.zeros(80)):
        raw = pred(img)["instances"].scores
    num_valid = 10 ** 9
    num_fg = int(float(raw.median()) * num_valid)
    pred.model.prior_state.set(PriorCounts(num_classes=80, num_foreground=num_fg,
                                           num_valid=num_valid, per_class=[num_fg] + [0] * 79))
    out = tmp_path_factory.mktemp("low_thr")
    DetectionCheckpointer(pred.model, save_dir=str(out)).save("model_low_threshold")
    return out / "model_low_threshold.pth", num_fg / num_valid
