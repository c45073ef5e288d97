"""Session fixtures for segmentation: one tiny seeded MobileSAM (upstream classes), exported ONCE to
fp32 and int8 through the real recipe, installed into a test EDGE_HOME, and a Runtime over it."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np
import pytest

THREADS = 2
MODEL_ID = "mobilesam-tiny-test"


@pytest.fixture(scope="session")
def sam_torch():
    """The tiny random MobileSAM in PyTorch (upstream mobile_sam classes), built once."""
    import torch

    torch.set_num_threads(THREADS)
    from export.recipes.sam_onnx import build_sam

    return build_sam("tiny", seed=0)


def _export(sam, out: Path, precision: str, *extra: str) -> Path:
    from export.recipes import sam_onnx as R

    p = argparse.ArgumentParser()
    R.add_arguments(p)
    args = p.parse_args(["--random-init", "tiny", "--precision", precision, "--out", str(out),
                         "--verify-images", "1", *extra])
    return R.run(args, sam=sam)


@pytest.fixture(scope="session")
def sam_fp32_dir(sam_torch, tmp_path_factory) -> Path:
    return _export(sam_torch, tmp_path_factory.mktemp("sam") / "fp32", "fp32")


@pytest.fixture(scope="session")
def sam_int8_dir(sam_torch, sam_fp32_dir, tmp_path_factory) -> Path:
    """int8 through the recipe, quantizing the session's fp32 export (verified again vs PyTorch)."""
    return _export(sam_torch, tmp_path_factory.mktemp("sam") / "int8", "int8", "--from-onnx", str(sam_fp32_dir))


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
    from edge.config import Settings
    from edge.registry import add_local_model

    home = tmp_path_factory.mktemp("edge-home")
    s = Settings.from_env(env={}, home=home)
    add_local_model(s, sam_fp32_dir, model_id=MODEL_ID, task="segment", fmt="onnx", license="Apache-2.0",
                    source={"recipe": "sam", "random_init": "tiny", "seed": 0})
    return home


@pytest.fixture(scope="session")
def seg_runtime(seg_home):
    from edge.api import Runtime

    rt = Runtime(home=str(seg_home), threads=THREADS, offline=True, keep_alive=-1)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def seg_server(seg_runtime):
    """A real uvicorn server on a free port, in this process, over the session Runtime (so tests can
    also look at the engine's counters)."""
    import socket

    import uvicorn

    from edge.server.app import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(seg_runtime), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
