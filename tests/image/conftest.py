"""Session fixtures for image generation: the tiny seeded LCM (real diffusers/transformers
architectures) exported ONCE through the real recipe (fp32, int8, fp16, QDQ static int8, TAESD), installed into a test
EDGE_HOME through the registry, a Runtime over it and a real uvicorn server."""

from __future__ import annotations

import argparse
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

MODEL_ID = "lcm-tiny-random"
THREADS = 2
CHAT_MODEL = "smollm2-135m-instruct-q4_1"


@pytest.fixture(scope="session")
def tiny_src():
    """The PyTorch components (same seed as the export, so the same weights)."""
    from export.recipes.lcm_onnx import random_components

    return random_components("tiny", 0)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """`edge-run export lcm --random-init tiny` output folder (verified by the recipe itself)."""
    from export.recipes import lcm_onnx

    p = argparse.ArgumentParser()
    lcm_onnx.add_arguments(p)
    out = tmp_path_factory.mktemp("lcm-export") / MODEL_ID
    # --winograd-size 256: the tiny UNet's convolutions are all under 16 px at its own 64 px default
    args = p.parse_args(["--random-init", "tiny", "--out", str(out), "--precisions",
                         "fp32,int8,fp16,qdq,winograd,int8-winograd", "--winograd-size", "256",
                         "--threads", str(THREADS), "--no-progress"])
    return lcm_onnx.run(args)


@pytest.fixture(scope="session")
def tokenizer_dir(tiny_export) -> Path:
    return tiny_export / "tokenizer"


def components(folder: Path, precision: str = "fp32"):
    import json

    from edge.image.engine import components_from_manifest

    manifest = json.loads((folder / "edge-model.json").read_text())
    return components_from_manifest(manifest, folder, precision=precision, threads=THREADS, device="cpu")


@pytest.fixture(scope="session")
def fp32_components(tiny_export):
    return components(tiny_export, "fp32")


@pytest.fixture(scope="session")
def make_components(tiny_export):
    """precision -> Components over the tiny export."""
    return lambda precision: components(tiny_export, precision)


@pytest.fixture(scope="session")
def image_home(tiny_export, tmp_path_factory) -> Path:
    """A test EDGE_HOME with the tiny LCM installed through the registry (hashed, locked)."""
    from edge.config import Settings
    from edge.registry import add_local_model

    home = tmp_path_factory.mktemp("edge-home-image")
    s = Settings.from_env(env={}, home=home)
    add_local_model(s, tiny_export, model_id=MODEL_ID, task="image", fmt="onnx", license="Apache-2.0",
                    source={"recipe": "lcm", "random_init": "tiny", "seed": 0})
    return home


@pytest.fixture(scope="session")
def image_runtime(image_home):
    from edge.api import Runtime

    rt = Runtime(home=str(image_home), threads=THREADS, offline=True, keep_alive=-1)
    yield rt
    rt.close()


def _serve(runtime):
    import uvicorn

    from edge.server.app import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(runtime), host="127.0.0.1", port=port, log_level="warning",
                                          access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def image_server(image_runtime):
    """A real uvicorn server on a free port, in this process, over the session Runtime."""
    server, thread, url = _serve(image_runtime)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


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
