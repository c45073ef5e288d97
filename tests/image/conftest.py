"""Session fixtures for image generation over the tiny seeded LCM (real diffusers/transformers
architectures) that tests/conftest.py exports ONCE through the real recipe (fp32, int8, fp16, QDQ static
int8, TAESD): the pipeline's components, a test EDGE_HOME with it installed through the registry, a Runtime
over it and a real uvicorn server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support import CHAT_MODEL, IMAGE_MODEL, THREADS, install_local, open_runtime, serve_in_thread

MODEL_ID = IMAGE_MODEL


@pytest.fixture(scope="session")
def tokenizer_dir(tiny_export) -> Path:
    return tiny_export / "tokenizer"


def components(folder: Path, precision: str = "fp32", device: str = "cpu"):
    from edge.image.engine import components_from_manifest
    from edge.manifest import read

    return components_from_manifest(read(folder, task="image"), folder, precision=precision, threads=THREADS,
                                    device=device)


@pytest.fixture(scope="session")
def fp32_components(tiny_export):
    return components(tiny_export, "fp32")


@pytest.fixture(scope="session")
def make_components(tiny_export):
    """(precision, device="cpu") -> Components over the tiny export."""
    return lambda precision, device="cpu": components(tiny_export, precision, device)


@pytest.fixture(scope="session")
def image_home(tiny_export, tmp_path_factory) -> Path:
    """A test EDGE_HOME with the tiny LCM installed through the registry (hashed, locked)."""
    return install_local(tmp_path_factory.mktemp("edge-home-image"), tiny_export, MODEL_ID, "image",
                         {"recipe": "lcm", "random_init": "tiny", "seed": 0})


@pytest.fixture(scope="session")
def image_runtime(image_home):
    with open_runtime(image_home) as rt:
        yield rt


@pytest.fixture(scope="session")
def image_server(image_runtime):
    """A real uvicorn server on a free port, in this process, over the session Runtime."""
    with serve_in_thread(image_runtime) as url:
        yield url


@pytest.fixture(scope="session")
def mixed_home(image_home, chat_model_path, tmp_path_factory) -> Path:
    """image_home plus the real SmolLM2 chat model of the built-in models.lock (copied from the shared
    test cache into the store; the registry verifies its sha256 on load), for chat-while-imagining."""
    home = tmp_path_factory.mktemp("edge-home-mixed")
    shutil.copytree(image_home, home, dirs_exist_ok=True)
    dest = home / "models" / CHAT_MODEL
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(chat_model_path, dest / "model.gguf")
    return home
