"""Verification of chat exports against transformers (the reference no one here wrote).

On a fixed token sequence (the start of the shipped public-domain text): max abs logit difference,
top-1 agreement and mean KL(reference || artifact) per position; perplexity on the text; and whether
the artifact's own tokenizer (llama.cpp's, from the GGUF) splits text exactly as the HF tokenizer does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.llm.source import Source
from export.llm.text import sample_text

FIXED_TOKENS = 128     # length of the fixed comparison sequence
PPL_CTX = 512          # perplexity window (non-overlapping chunks)
PPL_CHUNKS = 2


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def compare_logits(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """max |diff|, top-1 agreement and mean KL(ref || got) over positions (rows)."""
    lr, lg = log_softmax(ref), log_softmax(got)
    kl = (np.exp(lr) * (lr - lg)).sum(-1)
    return {"max_abs_diff": float(np.abs(ref.astype(np.float64) - got).max()),
            "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
            "mean_kl": float(max(kl.mean(), 0.0)), "positions": int(ref.shape[0])}


def nll_perplexity(logits: np.ndarray, tokens: list[int]) -> tuple[float, int]:
    """(sum of next-token NLL, count) for logits[i] predicting tokens[i + 1]."""
    lp = log_softmax(logits[:-1])
    nll = -lp[np.arange(len(tokens) - 1), np.asarray(tokens[1:])]
    return float(nll.sum()), len(tokens) - 1


# reference (transformers) -------------------------------------------------------------------------

def hf_tokenize(src: Source, text: str) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src.folder))
    return list(tok(text, add_special_tokens=False)["input_ids"])


def fixed_sequence(src: Source, n: int = FIXED_TOKENS) -> list[int]:
    ids = hf_tokenize(src, sample_text())
    bos = src.config.get("bos_token_id")
    return ([bos] if isinstance(bos, int) else []) + ids[: n - 1]


def torch_logits(model, tokens: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(torch.tensor([tokens]), use_cache=False)
    return out.logits[0].float().numpy()


def torch_perplexity(model, tokens: list[int]) -> float:
    total, count = 0.0, 0
    for chunk in _chunks(tokens):
        s, c = nll_perplexity(torch_logits(model, chunk), chunk)
        total, count = total + s, count + c
    return float(np.exp(total / count))


def _chunks(tokens: list[int]) -> list[list[int]]:
    return [tokens[i:i + PPL_CTX] for i in range(0, len(tokens), PPL_CTX)][:PPL_CHUNKS]


# llama.cpp ----------------------------------------------------------------------------------------

def open_llama(path: Path, threads: int, n_ctx: int = PPL_CTX):
    from edge.chat.engine import open_llama as load

    return load(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                           n_threads_batch=threads, logits_all=True, type_k=0, type_v=0,  # f32 KV cache
                           verbose=False)


def llama_logits(llm, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def llama_perplexity(llm, text: str) -> tuple[float, int]:
    """Perplexity with llama.cpp's own tokenization of ``text`` (BOS first when the model adds it)."""
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    total, count = 0.0, 0
    for chunk in _chunks(tokens):
        s, c = nll_perplexity(llama_logits(llm, chunk), chunk)
        total, count = total + s, count + c
    return float(np.exp(total / count)), len(tokens)


def tokenizer_agreement(llm, src: Source) -> dict[str, Any]:
    """Does llama.cpp (reading our GGUF) split text exactly as the HF tokenizer?"""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src.folder))
    samples = [sample_text()[:2000], "Numbers 12345 and 3.14159, tabs\tand  spaces\n\nnew lines; café ünïcode 日本語!"]
    template = src.chat_template()
    if template:
        samples.append(tok.apply_chat_template([{"role": "user", "content": "Hi there, 42?"}], tokenize=False,
                                               add_generation_prompt=True))
    results = []
    for i, s in enumerate(samples):
        ours = llm.tokenize(s.encode("utf-8"), add_bos=False, special=True)
        ref = list(tok(s, add_special_tokens=False)["input_ids"])
        results.append(ours == ref)
    return {"samples": len(samples), "match": all(results), "per_sample": results}


def verify_gguf(src: Source, model, files: dict[str, Path], threads: int, *,
                ref_logits: np.ndarray | None = None, tokens: list[int] | None = None) -> dict[str, Any]:
    """Compare every GGUF in ``files`` (quant -> path) with the transformers ``model``."""
    tokens = tokens or fixed_sequence(src)
    ref = ref_logits if ref_logits is not None else torch_logits(model, tokens)
    text = sample_text()
    ref_ppl_tokens = hf_tokenize(src, text)
    bos = src.config.get("bos_token_id")
    ref_ppl = torch_perplexity(model, ([bos] if isinstance(bos, int) else []) + ref_ppl_tokens)
    report: dict[str, Any] = {"fixed_sequence_tokens": len(tokens), "reference": "transformers float32",
                              "reference_perplexity": ref_ppl, "quants": {}}
    for quant, path in files.items():
        llm = open_llama(path, threads)
        try:
            got = llama_logits(llm, tokens)
            row: dict[str, Any] = compare_logits(ref, got)
            row["perplexity"], row["perplexity_tokens"] = llama_perplexity(llm, text)
            if "tokenizer" not in report:
                report["tokenizer"] = tokenizer_agreement(llm, src)
        finally:
            llm.close()
        row["file_size"] = path.stat().st_size
        report["quants"][quant] = row
    return report


# onnxruntime ---------------------------------------------------------------------------------------

def onnx_logits(folder: Path, tokens: list[int], threads: int, prefill: int | None = None) -> np.ndarray:
    """Last-position logits after each token of ``tokens`` through the exported graph: one prefill of
    ``prefill`` tokens, then one token per call (so the KV-cache path is what is compared). The rows
    line up with the reference's rows ``prefill - 1 ..``."""
    from edge.chat.onnx_engine import OnnxChatEngine

    eng = OnnxChatEngine(folder, threads=threads, n_ctx=len(tokens) + 8)
    slot = eng.pool.slots[0]  # drive the graph directly, no sampling
    prefill = prefill or max(1, len(tokens) // 2)
    rows = [eng._forward(slot, tokens[:prefill])]  # noqa: SLF001
    for t in tokens[prefill:]:
        rows.append(eng._forward(slot, [t]))  # noqa: SLF001
    eng.close()
    return np.stack(rows)


def greedy_pairs(src: Source, model, folder: Path, threads: int, prompts: list[str],
                 max_new_tokens: int = 24) -> list[dict[str, Any]]:
    """Greedy answers of the ONNX engine vs transformers' generate() on the same chat prompts."""
    import torch
    from transformers import AutoTokenizer

    from edge.chat.onnx_engine import OnnxChatEngine
    from edge.chat.request import ChatRequest

    tok = AutoTokenizer.from_pretrained(str(src.folder))
    eng = OnnxChatEngine(folder, threads=threads, n_ctx=1024)
    rows = []
    try:
        for p in prompts:
            messages = [{"role": "user", "content": p}]
            ref_prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)
            ref_prompt = list(ref_prompt["input_ids"] if isinstance(ref_prompt, dict) else ref_prompt)
            ours_prompt = eng.encode(eng.render(messages), add_bos=True)
            with torch.no_grad():
                out = model.generate(torch.tensor([ref_prompt]), attention_mask=torch.ones(1, len(ref_prompt),
                                     dtype=torch.long), max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0)
            ref_ids = [int(t) for t in out[0, len(ref_prompt):]]
            if ref_ids and ref_ids[-1] in eng.eos_ids:
                ref_ids = ref_ids[:-1]
            gen = eng.chat_steps(ChatRequest(messages=messages, max_tokens=max_new_tokens, temperature=0.0))
            try:
                while True:
                    next(gen)
            except StopIteration as stop:
                res = stop.value
            rows.append({"prompt": p, "prompt_tokens_equal": ours_prompt == ref_prompt,
                         "reference": tok.decode(ref_ids, skip_special_tokens=True), "ours": res.text,
                         "reference_tokens": len(ref_ids), "our_tokens": res.completion_tokens,
                         "equal": ours_prompt == ref_prompt and res.text == tok.decode(ref_ids, skip_special_tokens=True)
                         and res.completion_tokens == len(ref_ids)})
    finally:
        eng.close()
    return rows


def verify_onnx(src: Source, model, folder: Path, threads: int, prompts: list[str]) -> dict[str, Any]:
    tokens = fixed_sequence(src)
    ref = torch_logits(model, tokens)
    prefill = len(tokens) // 2
    got = onnx_logits(folder, tokens, threads, prefill)
    cmp = compare_logits(ref[prefill - 1:], got)
    greedy = greedy_pairs(src, model, folder, threads, prompts)
    return {"logits": cmp, "greedy": greedy, "greedy_equal": all(r["equal"] for r in greedy),
            "fixed_sequence_tokens": len(tokens), "prefill": prefill, "reference": "transformers float32"}
