import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Generated datasets go to a per-session cache unless the caller chose one."""
    if "SCRATCHDET_CACHE" not in os.environ:
        os.environ["SCRATCHDET_CACHE"] = str(tmp_path_factory.mktemp("scratchdet_cache"))
    yield


@pytest.fixture(scope="session")
def coco_mini():
    from scratchdet.data import coco_mini_root

    root = coco_mini_root()
    if not os.path.isdir(root):
        pytest.fail(f"coco_mini not found at {root}; set SCRATCHDET_COCO_MINI")
    return root
