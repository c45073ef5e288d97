"""GGUF export: llama.cpp (reading our file) vs transformers; llama.cpp's quantizer; the SmolLM2 round trip;
bad input gives one line and leaves nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from export.llm import check
from support import THREADS


def test_tiny_f32_logits_equal_transformers(tiny_gguf, tiny_llama, tiny_llama_torch):
    tokens = check.fixed_sequence(tiny_llama)
    ref = check.torch_logits(tiny_llama_torch, tokens)
    llm = check.open_llama(tiny_gguf / "model.f32.gguf", THREADS)
    try:
        got = check.llama_logits(llm, tokens)
    finally:
        llm.close()
    assert ref.std() > 1.0  # peaked, non-trivial logits
    assert np.abs(got - ref).max() <= 1e-3


def test_tiny_q8_0_top1_agreement(tiny_gguf, tiny_llama, tiny_llama_torch):
    tokens = check.fixed_sequence(tiny_llama)
    ref = check.torch_logits(tiny_llama_torch, tokens)
    llm = check.open_llama(tiny_gguf / "model.q8_0.gguf", THREADS)
    try:
        got = check.llama_logits(llm, tokens)
    finally:
        llm.close()
    cmp = check.compare_logits(ref, got)
    assert cmp["top1_agreement"] >= 0.99
    assert 0 < cmp["max_abs_diff"]  # really quantized
    assert (tiny_gguf / "model.q8_0.gguf").stat().st_size < 0.4 * (tiny_gguf / "model.f32.gguf").stat().st_size


def test_report_and_manifest(tiny_gguf):
    report = json.loads((tiny_gguf / "report.json").read_text())
    assert report["passed"] and report["tokenizer"]["match"]
    assert set(report["quants"]) == {"f32", "q8_0"}
    assert report["quants"]["f32"]["max_abs_diff"] <= 1e-3
    for row in report["quants"].values():
        assert np.isfinite(row["perplexity"]) and row["perplexity_tokens"] > 1000
        assert row["mean_kl"] >= 0
    manifest = json.loads((tiny_gguf / "edge-model.json").read_text())
    assert manifest["task"] == "chat" and manifest["format"] == "gguf"
    assert {f["name"] for f in manifest["files"]} >= {"model.f32.gguf", "model.q8_0.gguf", "report.json"}
    assert not [p for p in tiny_gguf.parent.iterdir() if p.name.endswith(".partial")]


def test_gguf_metadata_written(tiny_gguf):
    import gguf

    r = gguf.GGUFReader(str(tiny_gguf / "model.f32.gguf"))
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.ggml.t")}
    assert kv["general.architecture"] == "llama"
    assert kv["llama.block_count"] == 2 and kv["llama.attention.head_count_kv"] == 2
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "gpt-2"
    assert kv["tokenizer.ggml.bos_token_id"] == 1 and kv["tokenizer.ggml.eos_token_id"] == 2
    assert "<|im_start|>" in kv["tokenizer.chat_template"]
    names = {t.name for t in r.tensors}
    assert {"token_embd.weight", "output.weight", "output_norm.weight", "blk.1.attn_q.weight"} <= names


def test_tiny_qwen2_logits_equal_transformers(tmp_path):
    """Qwen2: q/k/v biases, NeoX rope (no permutation), tied embeddings, the qwen2 pre-tokenizer."""
    from export.llm import gguf_file
    from export.llm.source import load_torch_model, random_init

    src = random_init("tiny-qwen2", tmp_path / "hf", seed=1)
    info = gguf_file.write_gguf(src, tmp_path / "q.gguf", "f32")
    assert info["tokenizer"]["kind"] == "bpe/qwen2"
    model = load_torch_model(src)
    tokens = check.fixed_sequence(src)
    llm = check.open_llama(tmp_path / "q.gguf", THREADS)
    try:
        got = check.llama_logits(llm, tokens)
        agree = check.tokenizer_agreement(llm, src)
    finally:
        llm.close()
    assert np.abs(got - check.torch_logits(model, tokens)).max() <= 1e-3
    assert agree["match"]


@pytest.mark.slow
def test_smollm2_round_trip(smollm2_hf, chat_model_path, tmp_path):
    """Original Q4_1 GGUF -> transformers (dequantized) -> our export -> llama.cpp's Q4_1: the same tensors
    byte for byte as the original file, and the same greedy answers."""
    import gguf
    from edge.chat.engine import open_llama  # llama_cpp.Llama, minus the AMX path that crashes on AMX CPUs

    from export.llm import gguf_file

    base = tmp_path / "f32.gguf"
    gguf_file.write_gguf(smollm2_hf, base, "f32")
    ours = tmp_path / "q4_1.gguf"
    gguf_file.quantize(base, ours, "q4_1", THREADS)
    a, b = gguf.GGUFReader(str(chat_model_path)), gguf.GGUFReader(str(ours))
    theirs = {t.name: bytes(t.data) for t in a.tensors}
    mine = {t.name: bytes(t.data) for t in b.tensors}
    assert set(theirs) == set(mine)
    assert sum(theirs[n] == mine[n] for n in theirs) == len(theirs)

    prompts = ["What is the capital of France?", "Write a haiku about the sea.", "Name three colours."]

    def answers(path: Path) -> list[str]:
        llm = open_llama(model_path=str(path), n_ctx=512, n_threads=THREADS, verbose=False)
        try:
            return [llm.create_chat_completion([{"role": "user", "content": p}], temperature=0, max_tokens=24)
                    ["choices"][0]["message"]["content"] for p in prompts]
        finally:
            llm.close()

    original = answers(chat_model_path)
    assert all(len(x) > 10 for x in original)
    assert answers(ours) == original


# bad input ---------------------------------------------------------------------------------------

def _run_main(capsys, argv) -> tuple[int, str]:
    from export.recipes import llm_gguf

    code = llm_gguf.main(argv + ["--threads", str(THREADS)])
    out = capsys.readouterr().out.strip().splitlines()
    return code, out[-1] if out else ""


def _assert_nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_unsupported_architecture(tiny_llama, tmp_path, capsys):
    src = tmp_path / "gpt2"
    shutil.copytree(tiny_llama.folder, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (src / "config.json").write_text(json.dumps(cfg))
    code, line = _run_main(capsys, [str(src), "--out", str(tmp_path / "o")])
    assert code != 0 and "unsupported architecture 'GPT2LMHeadModel'" in line
    assert "LlamaForCausalLM" in line and "Qwen2ForCausalLM" in line
    _assert_nothing_left(tmp_path / "o")


def test_missing_tokenizer(tiny_llama, tmp_path, capsys):
    src = tmp_path / "notok"
    shutil.copytree(tiny_llama.folder, src)
    (src / "tokenizer.json").unlink()
    code, line = _run_main(capsys, [str(src), "--out", str(tmp_path / "o")])
    assert code != 0 and "missing its tokenizer files" in line and "tokenizer.json" in line
    _assert_nothing_left(tmp_path / "o")


def test_unknown_quant(tiny_llama, tmp_path, capsys):
    code, line = _run_main(capsys, [str(tiny_llama.folder), "--quant", "q8_0,q3_xl", "--out", str(tmp_path / "o")])
    assert code != 0 and "unknown quant type q3_xl" in line and "q4_k_m" in line and "q8_0" in line
    _assert_nothing_left(tmp_path / "o")


def test_unwritable_output(tiny_llama, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, line = _run_main(capsys, [str(tiny_llama.folder), "--quant", "f32", "--out", str(blocker / "o")])
    assert code != 0 and "not writable" in line and "--out" in line


def test_not_enough_disk(tiny_llama, tmp_path, capsys, monkeypatch):
    import collections

    import export.recipes.llm_gguf as recipe

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(recipe.shutil, "disk_usage", lambda p: usage(10 << 20, 10 << 20, 1 << 20))
    code, line = _run_main(capsys, [str(tiny_llama.folder), "--quant", "f32", "--out", str(tmp_path / "o")])
    assert code != 0 and "not enough disk" in line and "MiB free" in line
    _assert_nothing_left(tmp_path / "o")


def test_failure_midway_leaves_nothing(tiny_llama, tmp_path, capsys):
    """A weight with no llama.cpp name is found only while writing: the temp folder is removed."""
    from safetensors.torch import load_file, save_file

    src = tmp_path / "extra"
    shutil.copytree(tiny_llama.folder, src)
    st = load_file(str(src / "model.safetensors"))
    st["model.layers.0.self_attn.mystery.weight"] = st["model.norm.weight"].clone()
    save_file(st, str(src / "model.safetensors"), metadata={"format": "pt"})
    code, line = _run_main(capsys, [str(src), "--quant", "f32", "--out", str(tmp_path / "o")])
    assert code != 0 and "mystery" in line
    _assert_nothing_left(tmp_path / "o")


@pytest.mark.parametrize("recipe", ["llm", "llm-onnx"])
def test_an_llm_recipe_needs_exactly_one_source(recipe, tmp_path, capsys):
    """Both llm recipes check their source in one place (export/llm/source.py one_source) before any work."""
    from edge.cli import main

    assert main(["export", recipe, "--out", str(tmp_path / "none")]) == 2
    assert main(["export", recipe, "some/model", "--random-init", "tiny-llama", "--out", str(tmp_path / "both")]) == 2
    err = capsys.readouterr().err
    assert err.count("give exactly one source: a Hugging Face model folder / hub id, or --random-init") == 2, err
    assert not (tmp_path / "none").exists() and not (tmp_path / "both").exists()
