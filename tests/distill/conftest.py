"""Session fixtures for the distillation recipes: tiny teachers (a Llama trained briefly on the shipped
corpus, a Stable-Diffusion-class pipeline trained briefly on captioned shapes, the tiny seeded
MobileSAM) and one run of each recipe through the real `edge-run distill` command with the shipped
tiny config files. Every artifact is built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from distill_helpers import CONFIGS, THREADS, distill


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distill")


# ---------------------------------------------------------------------------------------------- llm-kd
@pytest.fixture(scope="session")
def llm_teacher(work) -> Path:
    """A 4-layer, 64-wide Llama (byte-level BPE of 512 tokens, ChatML template) trained for 100 steps."""
    from export.distill.teachers import llm_teacher

    return llm_teacher(work / "llm-teacher", steps=100, batch=8, lr=5e-3)["path"]


@pytest.fixture(scope="session")
def llm_student(work, llm_teacher) -> Path:
    """`edge-run distill llm-kd --config llm-kd-tiny.toml` (1 process, batch 16)."""
    out = work / "llm-student"
    assert distill(["llm-kd", "--config", str(CONFIGS / "llm-kd-tiny.toml"), "--teacher", str(llm_teacher),
                    "--out", str(out), "--threads", str(THREADS), "--no-progress", "--home",
                    str(work / "home")]) == 0
    return out


# ---------------------------------------------------------------------------------------------- sam-encoder
@pytest.fixture(scope="session")
def sam_teacher(work) -> Path:
    from export.distill.teachers import sam_teacher

    return sam_teacher(work / "sam-teacher" / "mobile_sam_tiny.pt")


@pytest.fixture(scope="session")
def sam_student(work, sam_teacher) -> Path:
    out = work / "sam-student"
    assert distill(["sam-encoder", "--config", str(CONFIGS / "sam-encoder-tiny.toml"), "--teacher", str(sam_teacher),
                    "--out", str(out), "--threads", str(THREADS), "--no-progress", "--home",
                    str(work / "home")]) == 0
    return out


# ---------------------------------------------------------------------------------------------- lcm
@pytest.fixture(scope="session")
def sd_teacher(work) -> Path:
    """A tiny SD-class pipeline (epsilon prediction) trained for a few hundred steps on captioned shapes."""
    from export.distill.teachers import sd_teacher

    return sd_teacher(work / "sd-teacher", train_steps=int(os.environ.get("EDGE_TEST_SD_TEACHER_STEPS", 300)),
                      images=128)["path"]


@pytest.fixture(scope="session")
def lcm_student(work, sd_teacher) -> Path:
    out = work / "lcm-student"
    assert distill(["lcm", "--config", str(CONFIGS / "lcm-tiny.toml"), "--teacher", str(sd_teacher),
                    "--out", str(out), "--threads", str(THREADS), "--no-progress", "--home",
                    str(work / "home")]) == 0
    return out


@pytest.fixture(scope="session")
def edge_home_for(tmp_path_factory):
    """install(folder, model_id, task, fmt) -> a fresh EDGE_HOME with the folder installed (registry)."""
    from edge.config import Settings
    from edge.registry import add_local_model

    def install(folder: Path, model_id: str, task: str, fmt: str) -> Path:
        home = tmp_path_factory.mktemp(f"home-{model_id}")
        add_local_model(Settings.from_env(env={}, home=home), folder, model_id=model_id, task=task, fmt=fmt,
                        license="Apache-2.0", source={"recipe": "distill-test"})
        return home

    return install
