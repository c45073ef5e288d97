"""ONNX export and the ONNX chat engine: greedy tokens equal transformers' generate() (tiny random model and
the dequantized SmolLM2), int8 / int4 weights, and the engine behind edge.api.Runtime like a GGUF model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support import THREADS, drain

from edge.chat.onnx_engine import OnnxChatEngine
from edge.chat.request import ChatRequest
from export.llm import check, onnx_file

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "Name three colours."]


def test_tiny_onnx_greedy_equals_generate(tiny_onnx, tiny_llama, tiny_llama_torch):
    rows = check.greedy_pairs(tiny_llama, tiny_llama_torch, tiny_onnx, THREADS, PROMPTS[:2], max_new_tokens=32)
    assert all(r["prompt_tokens_equal"] for r in rows)
    assert all(r["reference_tokens"] == 32 for r in rows)
    assert [r["ours"] for r in rows] == [r["reference"] for r in rows]
    assert all(r["equal"] for r in rows)


def test_tiny_onnx_logits_through_kv_cache(tiny_onnx, tiny_llama, tiny_llama_torch):
    tokens = check.fixed_sequence(tiny_llama)
    ref = check.torch_logits(tiny_llama_torch, tokens)
    got = check.onnx_logits(tiny_onnx, tokens, THREADS, prefill=20)
    assert np.abs(got - ref[19:]).max() <= 1e-3
    report = json.loads((tiny_onnx / "report.json").read_text())
    assert report["passed"] and report["greedy_equal"]


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_tiny_quantized(tiny_onnx, tiny_llama, tiny_llama_torch, tmp_path, precision):
    import onnx

    folder = tmp_path / precision
    folder.mkdir()
    for p in tiny_onnx.iterdir():
        if p.name != "model.onnx":
            (folder / p.name).write_bytes(p.read_bytes())
    quant = onnx_file.quantize_int8 if precision == "int8" else onnx_file.quantize_int4
    quant(tiny_onnx / "model.onnx", folder / "model.onnx")
    nodes = onnx.load(str(folder / "model.onnx")).graph.node
    nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
    assert len(nbits) == 2 * 7 + 1  # every weight MatMul (7 per layer + the head) is block-quantized
    bits = {next(a.i for a in n.attribute if a.name == "bits") for n in nbits}
    assert bits == ({4, 8} if precision == "int4" else {8})
    tokens = check.fixed_sequence(tiny_llama)
    cmp = check.compare_logits(check.torch_logits(tiny_llama_torch, tokens)[63:],
                               check.onnx_logits(folder, tokens, THREADS, prefill=64))
    assert cmp["top1_agreement"] >= (0.95 if precision == "int8" else 0.8), cmp
    assert 0 < cmp["max_abs_diff"]


@pytest.mark.slow
def test_smollm2_onnx_greedy_equals_generate(smollm2_hf, smollm2_torch, tmp_path):
    """Real weights: the dequantized SmolLM2 exported fp32; the engine's greedy answers equal generate()'s."""
    from export.recipes.llm_onnx import manifest_fields

    folder = tmp_path / "smol"
    folder.mkdir()
    onnx_file.export_fp32(smollm2_torch, folder / "model.onnx")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((smollm2_hf.folder / name).read_bytes())
    (folder / "edge-model.json").write_text(json.dumps({"model_file": "model.onnx",
                                                        **manifest_fields(smollm2_hf, "fp32")}))
    rows = check.greedy_pairs(smollm2_hf, smollm2_torch, folder, THREADS, PROMPTS, max_new_tokens=20)
    assert all(len(r["reference"]) > 10 for r in rows)  # real answers, not an immediate end of turn
    assert all(r["equal"] for r in rows), rows


# the engine -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(tiny_onnx):
    eng = OnnxChatEngine(tiny_onnx, threads=THREADS, slots=2, n_ctx=256)
    yield eng
    eng.close()


def test_engine_streams_and_reuses_prefix(engine):
    msgs = [{"role": "user", "content": "Hello there"}]
    steps, res = drain(engine.chat_steps(ChatRequest(messages=msgs, max_tokens=12, temperature=0)))
    assert [s.kind for s in steps][0] == "prefill"
    pieces = [s.data for s in steps if s.kind == "token"]
    assert "".join(pieces) == res.text and res.completion_tokens == 12 and res.finish_reason == "length"
    # second turn: the slot holding turn one is reused, only the new tokens are prefilled
    prompt2 = engine.encode(engine.render(msgs + [{"role": "assistant", "content": res.text},
                                                  {"role": "user", "content": "again"}]), add_bos=True)
    slot = max(engine.pool.slots, key=lambda s: len(s.tokens))
    assert slot.tokens[:10] == prompt2[:10]


def test_engine_stop_strings_and_sampling(engine):
    msgs = [{"role": "user", "content": "Tell me"}]
    _, full = drain(engine.chat_steps(ChatRequest(messages=msgs, max_tokens=24, temperature=0)))
    stop = full.text[5:8]
    steps, cut = drain(engine.chat_steps(ChatRequest(messages=msgs, max_tokens=24, temperature=0, stop=[stop])))
    assert cut.text == full.text[:full.text.find(stop)] and cut.finish_reason == "stop"
    assert "".join(s.data for s in steps if s.kind == "token") == cut.text
    a = drain(engine.chat_steps(ChatRequest(messages=msgs, max_tokens=16, temperature=1.0, seed=7)))[1]
    b = drain(engine.chat_steps(ChatRequest(messages=msgs, max_tokens=16, temperature=1.0, seed=7)))[1]
    assert a.text == b.text and a.completion_tokens == 16


def test_engine_bad_input(engine):
    from edge.errors import BadRequest, ContextTooLong

    with pytest.raises(BadRequest, match="json_schema"):
        drain(engine.chat_steps(ChatRequest(messages=[{"role": "user", "content": "x"}], json_schema={})))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(BadRequest, match="`tools` need a GGUF model") as err:  # a call needs a grammar
        drain(engine.chat_steps(ChatRequest(messages=[{"role": "user", "content": "x"}], tools=tools).check()))
    assert err.value.param == "tools"
    res = drain(engine.chat_steps(ChatRequest(messages=[{"role": "user", "content": "x"}], tools=tools,
                                              tool_choice="none", max_tokens=2).check()))[1]
    assert res.tool_calls is None and res.seed is not None  # "none" hides the tools: plain text, a drawn seed
    # edge/chat/slots.py's one message: both numbers and the fix, capped by the model's context_length (1024)
    for words, fix in ((150, "Shorten the conversation (/reset) or load with a larger context (--ctx 1024)."),
                       (600, "Shorten the conversation (/reset): this model is made for at most 1024 tokens.")):
        msgs = [{"role": "user", "content": "word " * words}]
        n = len(engine.encode(engine.render(msgs), add_bos=True))
        assert 256 < n < 1024 if words == 150 else n >= 1024, n
        with pytest.raises(ContextTooLong) as err:
            drain(engine.chat_steps(ChatRequest(messages=msgs)))
        assert err.value.message == f"the prompt is {n} tokens but the context window is 256. {fix}"


def test_engine_slots_follow_their_conversations(tiny_onnx):
    """Two conversations on two slots (edge/chat/slots.py): each next turn goes to the slot holding its own
    conversation, and only the new tokens are prefilled there."""
    eng = OnnxChatEngine(tiny_onnx, threads=THREADS, slots=2, n_ctx=1024)
    try:
        a = [{"role": "user", "content": "The cat sat on the mat. " * 40 + "Name a red fruit."}]
        b = [{"role": "user", "content": "A small bird flew over the sea. " * 40 + "Which bird is blue?"}]
        gen_a = eng.chat_steps(ChatRequest(messages=a, max_tokens=4, temperature=0))
        assert next(gen_a).kind == "prefill"  # A holds a slot while B runs
        slot_a = next(s for s in eng.pool.slots if s.busy)
        _, res_b = drain(eng.chat_steps(ChatRequest(messages=b, max_tokens=4, temperature=0)))
        _, res_a = drain(gen_a)
        slot_b = next(s for s in eng.pool.slots if s is not slot_a)
        tokens_a = list(slot_a.tokens)
        assert slot_b.tokens[:len(eng.encode(eng.render(b), add_bos=True))] == eng.encode(eng.render(b), add_bos=True)
        b2 = [*b, {"role": "assistant", "content": res_b.text}, {"role": "user", "content": "And a red one?"}]
        a2 = [*a, {"role": "assistant", "content": res_a.text}, {"role": "user", "content": "And a yellow one?"}]
        with eng.pool.take(eng.encode(eng.render(b2), add_bos=True)) as slot:
            assert slot is slot_b
        with eng.pool.take(eng.encode(eng.render(a2), add_bos=True)) as slot:
            assert slot is slot_a
        steps, _ = drain(eng.chat_steps(ChatRequest(messages=b2, max_tokens=4, temperature=0)))
        assert [s.kind for s in steps].count("prefill") == 1  # one chunk: the new turn, not the 300-token story
        assert slot_a.tokens == tokens_a
    finally:
        eng.close()


def test_runtime_chat_with_onnx_model(tiny_onnx, tmp_path):
    """Installed like any export (`--add`), the ONNX model answers through Runtime.chat, streamed or not."""
    from edge.api import Runtime
    from edge.config import Settings
    from edge.registry import add_local_model

    home = tmp_path / "home"
    add_local_model(Settings.from_env(env={}, home=home), tiny_onnx, model_id="tiny-onnx-chat", task="chat",
                    fmt="onnx")
    eng = OnnxChatEngine(tiny_onnx, threads=THREADS)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    _, direct = drain(eng.chat_steps(ChatRequest(messages=msgs, max_tokens=16, temperature=0)))
    eng.close()
    with Runtime(home=str(home), threads=THREADS, offline=True) as rt:
        res = rt.chat(msgs, model="tiny-onnx-chat", max_tokens=16, temperature=0)
        streamed = "".join(rt.chat(msgs, model="tiny-onnx-chat", max_tokens=16, temperature=0, stream=True))
        loaded = [m["id"] for m in rt.ps()]
    assert res.text == direct.text == streamed and res.usage()["completion_tokens"] == 16
    assert "tiny-onnx-chat" in loaded


def test_engine_on_openvino_answers_as_onnxruntime(tiny_onnx):
    """--device openvino (the OpenVINO runtime through edge.devices.make_session) runs the ONNX chat export: the
    same greedy answers as onnxruntime, through an empty and then a reused KV cache (tests/devices has the rest)."""
    pytest.importorskip("openvino")
    msgs = [{"role": "user", "content": "Hello there"}]
    answers = {}
    for device in ("cpu", "openvino"):
        eng = OnnxChatEngine(tiny_onnx, threads=THREADS, device=device, slots=1, n_ctx=256)
        try:
            _, one = drain(eng.chat_steps(ChatRequest(messages=msgs, max_tokens=16, temperature=0)))
            turn2 = msgs + [{"role": "assistant", "content": one.text}, {"role": "user", "content": "again"}]
            _, two = drain(eng.chat_steps(ChatRequest(messages=turn2, max_tokens=8, temperature=0)))
            answers[device] = (one.text, two.text)
        finally:
            eng.close()
    assert answers["openvino"] == answers["cpu"]
