"""Chat-export fixtures: seeded tiny random models (built once per session) and the real SmolLM2 GGUF
loaded into transformers (dequantized; cached between runs, it takes ~1 min of CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import CACHE, llm_recipe_args


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    from export.llm.source import random_init

    return random_init("tiny-llama", tmp_path_factory.mktemp("tiny-llama-hf"), seed=0)


@pytest.fixture(scope="session")
def tiny_llama_torch(tiny_llama):
    from export.llm.source import load_torch_model

    return load_torch_model(tiny_llama)


@pytest.fixture(scope="session")
def tiny_gguf(tiny_llama, tmp_path_factory) -> Path:
    """The `llm` recipe run on the tiny model: f32 + q8_0, verified, report.json written."""
    from export.recipes import llm_gguf

    out = tmp_path_factory.mktemp("gguf") / "tiny"
    return llm_gguf.run(llm_recipe_args(source=str(tiny_llama.folder), quant="f32,q8_0", out=str(out)))


@pytest.fixture(scope="session")
def tiny_onnx(tiny_llama, tmp_path_factory) -> Path:
    """The `llm-onnx` recipe run on the tiny model (fp32), verified."""
    from export.recipes import llm_onnx

    out = tmp_path_factory.mktemp("onnx") / "tiny-fp32"
    return llm_onnx.run(llm_recipe_args(source=str(tiny_llama.folder), quant="fp32", out=str(out)))


@pytest.fixture(scope="session")
def smollm2_hf(chat_model_path: Path):
    """The default chat model's GGUF (SmolLM2-135M-Instruct Q4_1) loaded by transformers' own GGUF reader and
    saved as an HF folder: real weights to export (cached next to the test EDGE_HOME)."""
    from export.artifacts import sha256_file
    from export.llm.source import check_source, gguf_to_hf

    stamp = f"{chat_model_path.stat().st_size}"
    folder = CACHE / f"smollm2-135m-instruct-dequant-{stamp}"
    if not (folder / "config.json").is_file():
        gguf_to_hf(chat_model_path, folder)
    return check_source(folder, {"kind": "gguf-dequantized", "sha256": sha256_file(chat_model_path)})


@pytest.fixture(scope="session")
def smollm2_torch(smollm2_hf):
    from export.llm.source import load_torch_model

    return load_torch_model(smollm2_hf)
