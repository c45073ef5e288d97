"""Session fixtures for segmentation over the tiny seeded MobileSAM (upstream classes) that
tests/conftest.py exports ONCE to fp32 and int8 through the real recipe: the upstream predictor, test
images, a test EDGE_HOME with the fp32 export installed, a Runtime over it and a real uvicorn server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from support import SEG_MODEL, install_local, open_runtime, serve_in_thread

MODEL_ID = SEG_MODEL


@pytest.fixture(scope="session")
def torch_predictor(sam_torch):
    from mobile_sam import SamPredictor

    return SamPredictor(sam_torch)


@pytest.fixture(scope="session")
def shapes_image() -> np.ndarray:
    from export.recipes.sam_onnx import synthetic_image

    return synthetic_image(0)


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photo that ships in scikit-image (dev extra)."""
    from skimage import data

    return data.coffee()  # 400 x 600 RGB


@pytest.fixture(scope="session")
def seg_home(sam_fp32_dir, tmp_path_factory) -> Path:
    """A test EDGE_HOME with the tiny fp32 export installed through the registry (hashed, locked)."""
    return install_local(tmp_path_factory.mktemp("edge-home"), sam_fp32_dir, MODEL_ID, "segment",
                         {"recipe": "sam", "random_init": "tiny", "seed": 0})


@pytest.fixture(scope="session")
def seg_runtime(seg_home):
    with open_runtime(seg_home) as rt:
        yield rt


@pytest.fixture(scope="session")
def seg_server(seg_runtime):
    """A real uvicorn server on a free port, in this process, over the session Runtime (so tests can
    also look at the engine's counters)."""
    with serve_in_thread(seg_runtime) as url:
        yield url
