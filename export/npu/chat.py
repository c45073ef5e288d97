"""ONNX chat model (``edge-run export llm-onnx ... --quant fp32``) -> NPU artifact: the decoder-with-past
graph made static for ONE new token after a FIXED past of ``context`` positions (batch 1), QDQ.

The runtime keeps its dynamic KV cache; edge.npu.adapters.StaticKVDecoder pads it into the fixed
buffer (unused positions masked out by attention_mask = 0) and takes each step's new key/value from
the last position of ``present``. Prefill runs one token per step. The attention bias constant (-1e9)
is clamped to -100 so a static quantizer keeps resolution for the scores (softmax is unchanged).
Calibration: the fp32 static graph driven token by token over chat prompts and its own greedy answers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import BadRequest
from edge.manifest import MANIFEST_FILE, ChatManifest, KvLayout, read
from export.npu import quant
from export.npu.convert import prepare

DEFAULT_CONTEXT = 256
CALIB_PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.", "List three uses of a brick.",
                 "Explain photosynthesis to a child.", "Translate 'good morning' into Spanish.",
                 "Give me a name for a grey cat.")
VERIFY_TEXT = "The quick brown fox jumps over the lazy dog. Once upon a time, in a small village by the sea,"
ANSWER_TOKENS = 8


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def _read(folder: Path) -> ChatManifest:
    """The ONNX chat export's typed manifest; it must say its KV layout."""
    m = read(folder, task="chat")
    assert isinstance(m, ChatManifest)
    if m.kv is None:
        raise BadRequest(f"{m.origin}: `kv` is missing; an ONNX chat export says its KV layout. Re-export it with "
                         "`edge-run export llm-onnx ... --quant fp32`.", param="source")
    return m


def _step_feeds(n_layers: int, n_kv: int, head_dim: int) -> dict[str, np.ndarray]:
    return {f"past_key_values.{i}.{kv}": np.zeros((1, n_kv, 0, head_dim), np.float32)
            for i in range(n_layers) for kv in ("key", "value")}


def drive(session, tokens: list[int], kv: KvLayout, extra: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """Run a decoder-with-past ``session`` one token at a time over ``tokens`` and then ``extra`` greedy
    tokens; returns the logits after every token and the greedy continuation."""
    past = _step_feeds(kv.num_layers, kv.num_kv_heads, kv.head_dim)
    names = [o.name for o in session.get_outputs()]
    logits_seq, answer, seq = [], [], list(tokens)
    i = 0
    while i < len(seq):
        p = next(iter(past.values())).shape[2]
        out = dict(zip(names, session.run(None, {"input_ids": np.array([[seq[i]]], np.int64),
                                                  "attention_mask": np.ones((1, p + 1), np.int64),
                                                  "position_ids": np.array([[p]], np.int64), **past})))
        past = {n: out[n.replace("past_key_values.", "present.")] for n in past}
        logits_seq.append(out["logits"][0, -1])
        if i == len(seq) - 1 and len(answer) < extra:
            nxt = int(np.argmax(logits_seq[-1]))
            answer.append(nxt)
            seq.append(nxt)
        i += 1
    return logits_seq, answer


class _Recorder:
    def __init__(self, session):
        self.session, self.feeds = session, []

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, names, feeds):
        self.feeds.append({k: np.array(v) for k, v in feeds.items()})
        return self.session.run(names, feeds)


def convert(src: Path, out: Path, schemes: list[str], default: str, *, context: int | None, threads: int,
            calib_limit: int = 8, gelu: str = "native") -> dict[str, Any]:
    import onnxruntime as ort

    from edge.npu.adapters import StaticKVDecoder

    manifest = _read(src)
    model_file = manifest.model_file
    L = int(context or min(DEFAULT_CONTEXT, manifest.context_length or DEFAULT_CONTEXT))
    if L < 8:
        raise BadRequest(f"`--context` must be at least 8 tokens, got {L}.", param="context")
    work = out / ".work"
    work.mkdir()
    # 1. static fp32 graph: one new token after L past positions
    prep = prepare(src / model_file, work / "model.onnx", dims={"batch": 1, "sequence": 1, "past": L, "total": L + 1},
                   gelu=gelu)
    # 2. calibration: the static graph (through the runtime's adapter) over prompts + its greedy answers
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    rec = _Recorder(ort.InferenceSession(str(prep.path), so, providers=["CPUExecutionProvider"]))
    static = StaticKVDecoder(rec, context=L)
    tok = _tokenizer(src)
    for prompt in CALIB_PROMPTS[:max(1, calib_limit)]:
        ids = tok.encode(prompt).ids[: L - ANSWER_TOKENS - 1]
        drive(static, ids, manifest.kv, extra=ANSWER_TOKENS)
    # 3. quantize per scheme; copy tokenizer / config files
    components = {}
    for scheme in schemes:
        rel = model_file if scheme == default else f"{scheme}/{model_file}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        quant.quantize_qdq(prep.path, out / rel, rec.feeds, scheme)
        components[rel] = {"role": "decoder", "quant": scheme, "static": True, "device": "npu",
                           "inputs": prep.inputs, "adapter": "static_kv_decoder", "context": L}
    for p in src.iterdir():
        if p.is_file() and p.name not in (model_file, model_file + ".data", MANIFEST_FILE, "report.json"):
            shutil.copyfile(p, out / p.name)
    for p in work.iterdir():
        p.unlink()
    work.rmdir()
    return {"components": components, "context": L,
            "rewrites": {"model": {**prep.rewrites, "ops_before": prep.ops_before, "ops_after": prep.ops_after}},
            "calibration": {"steps": len(rec.feeds), "prompts": min(len(CALIB_PROMPTS), max(1, calib_limit))}}


def manifest(src_manifest: dict, npu: dict, default: str) -> dict:
    m = json.loads(json.dumps(src_manifest))
    m.update({"precision": default, "recipe": "npu", "source_recipe": src_manifest.get("recipe", "llm-onnx"),
              "context_length": npu["context"]})
    return m


def verify(src: Path, out: Path, schemes: list[str], default: str, *, devices: list[str], tokens: int = 48,
           threads: int = 2) -> dict[str, Any]:
    """Top-1 next-token agreement (teacher forced on a fixed text) and the greedy answer of each
    scheme/device vs the fp32 export on the CPU."""
    from edge.devices import make_session

    m = _read(src)
    ids = _tokenizer(src).encode(VERIFY_TEXT).ids[:tokens]
    ref_sess = make_session(src / m.model_file, threads=threads, device="cpu")
    ref_logits, ref_answer = drive(ref_sess, ids, m.kv, extra=ANSWER_TOKENS)
    results = {}
    for scheme in schemes:
        rel = m.model_file if scheme == default else f"{scheme}/{m.model_file}"
        for device in devices:
            sess = make_session(out / rel, threads=threads, device=device)
            logits, answer = drive(sess, ids, m.kv, extra=ANSWER_TOKENS)
            n = len(ids)                          # teacher-forced part: both saw the same tokens
            top1 = float(np.mean([int(np.argmax(a) == np.argmax(b)) for a, b in zip(logits[:n], ref_logits[:n])]))
            p = dict(getattr(sess, "placement", {}) or {})
            p.pop("cache", None)
            results[f"{scheme}@{device}"] = {"scheme": scheme, "device": device, "top1_agreement": top1,
                                             "tokens": n, "greedy_same": answer == ref_answer,
                                             "placement": {"model": p}}
    return results
