"""Session fixtures for the distillation recipes: tiny teachers (a Llama trained briefly on the shipped
corpus, a Stable-Diffusion-class pipeline trained for a few minutes on captioned shapes, the tiny
seeded MobileSAM) and one run of each recipe through the real `edge-run distill` command with the
shipped tiny config files. Every artifact is built once per session; the two *trained* teachers are
also kept in the test cache (like the chat model of tests/conftest.py), keyed by a hash of what makes
them (their code, inputs, parameters and libraries), so only the first session pays for their training."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import pytest
from support import DISTILL_CONFIGS, THREADS, run_distill

ROOT = Path(__file__).resolve().parents[3]
CACHE = Path(os.environ.get("EDGE_TEST_CACHE", Path.home() / ".cache" / "edge-run-tests")) / "distill"
LLM_TEACHER_SOURCES = ("export/distill/teachers.py", "export/distill/data.py", "export/distill/data/corpus.txt",
                       "export/distill/llm_kd.py", "export/llm/source.py")
"""Every file teachers.llm_teacher runs code or data of (its tokenizer, corpus split, token blocks, template)."""
SD_TEACHER_SOURCES = ("export/distill/teachers.py", "export/distill/data.py")
"""teachers.sd_teacher's own files; what it takes from export/lcm is hashed by value (lcm_source_fingerprint)."""


def lcm_source_fingerprint(seed: int) -> bytes:
    """What teachers.sd_teacher takes from export.lcm, by value: the tiny seeded text encoder, UNet and VAE of
    ``random_components("tiny", seed, with_taesd=False)`` (class, config, every tensor), the CLIP vocabulary and
    merges, and SCHEDULER_CONFIG. Edits to export/lcm that leave these alone (the export's streaming, sd15
    memory work) keep the cached teacher; any change to them retrains it."""
    from export.lcm.sources import SCHEDULER_CONFIG, random_components

    src = random_components("tiny", seed, with_taesd=False)
    h = hashlib.sha256()
    for part in ("text_encoder", "unet", "vae"):
        module = getattr(src, part)
        cfg = module.config
        cfg = {k: v for k, v in (cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)).items()
               if not k.startswith("_")}  # bookkeeping (diffusers' _use_default_values comes from a set: any order)
        h.update(json.dumps([type(module).__module__, type(module).__qualname__, cfg,
                             getattr(module.config, "_attn_implementation", None)], sort_keys=True, default=str).encode())
        for key, t in module.state_dict().items():
            h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.detach().contiguous().numpy().tobytes())
    h.update(json.dumps([src.vocab, src.merges, SCHEDULER_CONFIG], sort_keys=True).encode())
    return h.digest()


def cached_teacher(name: str, build: Callable[..., object], sources: tuple[str, ...], inputs: bytes = b"",
                   **params) -> Path:
    """``build(folder, **params)`` once per version of what makes it: the folder is kept in the test cache
    under a key hashing the ``sources`` files, the ``inputs`` fingerprint, the parameters and the library
    versions."""
    import diffusers
    import torch
    import transformers

    h = hashlib.sha256()
    for rel in sources:
        h.update((ROOT / rel).read_bytes())
    h.update(inputs)
    h.update(json.dumps([params, torch.__version__, diffusers.__version__, transformers.__version__],
                        sort_keys=True, default=str).encode())
    dest = CACHE / f"{name}-{h.hexdigest()[:16]}"
    if (dest / ".complete").exists():
        return dest / "teacher"
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp / "teacher", **params)
    (tmp / ".complete").write_text(json.dumps(params, default=str))
    try:
        os.replace(tmp, dest)
    except OSError:  # another session finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / "teacher"


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

    return cached_teacher("llm-teacher", llm_teacher, LLM_TEACHER_SOURCES, steps=100, batch=16, lr=5e-3)


@pytest.fixture(scope="session")
def llm_student(work, llm_teacher) -> Path:
    """`edge-run distill llm-kd --config llm-kd-tiny.toml` (1 process, batch 16)."""
    out = work / "llm-student"
    assert run_distill(["llm-kd", "--config", str(DISTILL_CONFIGS / "llm-kd-tiny.toml"), "--teacher", str(llm_teacher),
                    "--out", str(out), "--threads", str(THREADS), "--no-progress"], home=work / "home") == 0
    return out


# ---------------------------------------------------------------------------------------------- sam-encoder
@pytest.fixture(scope="session")
def sam_teacher(work) -> Path:
    from export.distill.teachers import sam_teacher

    return sam_teacher(work / "sam-teacher" / "mobile_sam_tiny.pt")


@pytest.fixture(scope="session")
def sam_student(work, sam_teacher) -> Path:
    out = work / "sam-student"
    assert run_distill(["sam-encoder", "--config", str(DISTILL_CONFIGS / "sam-encoder-tiny.toml"), "--teacher", str(sam_teacher),
                    "--out", str(out), "--threads", str(THREADS), "--no-progress"], home=work / "home") == 0
    return out


# ---------------------------------------------------------------------------------------------- lcm
@pytest.fixture(scope="session")
def sd_teacher(work) -> Path:
    """A tiny SD-class pipeline that follows its prompts: v-prediction, UNet and text encoder trained
    on 2048 simple-shapes pairs at 32 px (~6 min on 2 cores, once: cached)."""
    from export.distill.teachers import PROMPT_FOLLOWING, sd_teacher

    params = {"seed": 0, **PROMPT_FOLLOWING}
    return cached_teacher("sd-teacher", sd_teacher, SD_TEACHER_SOURCES, lcm_source_fingerprint(params["seed"]),
                          **params)


LCM_STUDENT = """
import torch
from support import DISTILL_CONFIGS, THREADS, run_distill
torch.set_num_threads(THREADS)
code = run_distill(["lcm", "--config", str(DISTILL_CONFIGS / "lcm-tiny.toml"), "--teacher", TEACHER,
                    "--out", str(OUT / "lcm-student"), "--threads", str(THREADS), "--no-progress"], home=OUT / "home")
assert code == 0, f"edge-run distill lcm failed ({code})"
"""
LCM_STUDENT_DISTS = ("torch", "diffusers", "transformers", "accelerate", "peft", "numpy", "pillow", "tokenizers")


@pytest.fixture(scope="session")
def lcm_student(sd_teacher) -> Path:
    """`edge-run distill lcm --config lcm-tiny.toml` of the cached teacher (~2 min), run once per version of
    the code it runs, its config and the teacher (cached_build: the teacher's folder is content-keyed)."""
    from support import cached_build

    return cached_build("lcm-student", f"TEACHER = {str(sd_teacher)!r}\n" + LCM_STUDENT,
                        data=("export/distill/configs/lcm-tiny.toml",), dists=LCM_STUDENT_DISTS) / "lcm-student"


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
