"""Write a GGUF from a checked Hugging Face folder with the ``gguf`` package, and quantize it with
llama.cpp's own quantizer (``llama_cpp.llama_model_quantize``).

- tensor names: ``gguf.get_tensor_name_map`` (llama.cpp's HF -> GGUF table); Llama q/k weights are
  permuted to llama.cpp's rotary layout (interleaved pairs), Qwen2 keeps NeoX layout as llama.cpp does
- hyper-parameters under ``<arch>.*``; the tokenizer (byte-level BPE with merges and the llama.cpp
  pre-tokenizer name, or SentencePiece with scores), special token ids, add_bos/add_eos and the chat
  template (``gguf.SpecialVocab``)
"""

from __future__ import annotations

import ctypes
import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np

from edge.errors import BadRequest
from export.llm.source import QWEN2_SPLIT, Source

# quant name -> llama.cpp ftype constant name; f32 / f16 are written here, the rest by llama.cpp
QUANTS = {
    "f32": "LLAMA_FTYPE_ALL_F32", "f16": "LLAMA_FTYPE_MOSTLY_F16", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
}
# bits per weight of each, to estimate disk needs
BITS = {"f32": 32, "f16": 16, "q8_0": 8.5, "q6_k": 6.6, "q5_k_m": 5.7, "q4_k_m": 4.9, "q4_0": 4.5, "q4_1": 5.0}

# llama.cpp pre-tokenizer names, by the regex a tokenizer.json Split uses
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PRE = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}


def parse_quants(text: str) -> list[str]:
    """``q8_0,q4_k_m`` -> ["q8_0", "q4_k_m"]; unknown names are one clear error listing the valid ones."""
    names = [q.strip().lower() for q in str(text).split(",") if q.strip()]
    bad = [q for q in names if q not in QUANTS]
    if bad or not names:
        raise BadRequest(f"unknown quant type {', '.join(bad) or repr(text)}; valid: {', '.join(QUANTS)}.",
                         param="quant")
    return list(dict.fromkeys(names))


# 1. hyper-parameters -----------------------------------------------------------------------------

def rope_settings(config: dict) -> tuple[float, dict]:
    """(theta, scaling dict) from either transformers 5's rope_parameters or the older fields."""
    params = dict(config.get("rope_parameters") or {})
    scaling = dict(config.get("rope_scaling") or {})
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    merged = {**scaling, **params, "rope_type": kind}
    return float(theta), merged


def head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def llama3_rope_factors(config: dict) -> np.ndarray:
    """Per-frequency divisors of Llama 3.x "llama3" rope scaling (llama.cpp's rope_freqs tensor)."""
    theta, s = rope_settings(config)
    dim = head_dim(config)
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    factor, lo, hi = s.get("factor", 8.0), s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old = s.get("original_max_position_embeddings", 8192)
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def add_hparams(w, src: Source, n_vocab: int, ftype) -> None:
    c = src.config
    theta, rope = rope_settings(c)
    w.add_name(src.config.get("_name_or_path") or src.folder.name)
    w.add_context_length(int(c.get("max_position_embeddings", 4096)))
    w.add_embedding_length(int(c["hidden_size"]))
    w.add_block_count(int(c["num_hidden_layers"]))
    w.add_feed_forward_length(int(c["intermediate_size"]))
    w.add_head_count(int(c["num_attention_heads"]))
    w.add_head_count_kv(int(c.get("num_key_value_heads") or c["num_attention_heads"]))
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(float(c.get("rms_norm_eps", 1e-6)))
    hd = head_dim(c)
    w.add_rope_dimension_count(hd)
    if hd != c["hidden_size"] // c["num_attention_heads"]:
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_vocab_size(n_vocab)
    w.add_file_type(ftype)
    kind = rope["rope_type"]
    if kind == "linear":
        import gguf
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope["factor"]))
    elif kind not in ("default", "llama3"):
        raise BadRequest(f"rope scaling {kind!r} is not supported by this exporter; supported: default, linear, "
                         "llama3.", param="source")


# 2. tokenizer ------------------------------------------------------------------------------------

def bpe_pre_name(tokenizer_json: dict) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE tokenizer.json (unknown layouts are refused)."""
    pt = tokenizer_json.get("pre_tokenizer") or {}
    parts = pt.get("pretokenizers", [pt]) if pt.get("type") == "Sequence" else [pt]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = (parts[0].get("pattern") or {}).get("Regex")
        if regex in SPLIT_PRE:
            return SPLIT_PRE[regex]
    raise BadRequest(f"unsupported pre-tokenizer {json.dumps(pt)[:160]}; supported byte-level BPE layouts: "
                     "GPT-2, SmolLM (digits + GPT-2), Llama 3, Qwen2.", param="source")


def add_bos_eos(src: Source, bos: int | None, eos: int | None) -> tuple[bool, bool]:
    """Whether the HF tokenizer itself adds BOS / EOS when encoding (its post-processor decides)."""
    if src.tokenizer_json is not None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(src.tokenizer_json))
        with_sp = tok.encode("hello", add_special_tokens=True).ids
        bare = tok.encode("hello", add_special_tokens=False).ids
        extra_front = len(with_sp) > len(bare) and with_sp[0] == bos
        extra_back = len(with_sp) > len(bare) and with_sp[-1] == eos
        return bool(extra_front), bool(extra_back)
    cfg = src.tokenizer_config()
    return bool(cfg.get("add_bos_token", True)), bool(cfg.get("add_eos_token", False))


def add_tokenizer(w, src: Source, n_vocab: int) -> dict:
    """Write the vocabulary, merges / scores, special tokens and chat template; returns a summary."""
    import gguf

    tj = json.loads(src.tokenizer_json.read_text(encoding="utf-8")) if src.tokenizer_json else None
    model = (tj or {}).get("model", {})
    if tj is not None and model.get("type") == "BPE" and not model.get("byte_fallback"):
        # byte-level BPE (GPT-2 style): SmolLM2, Llama 3, Qwen2
        pre = bpe_pre_name(tj)
        rev = {i: t for t, i in model["vocab"].items()}
        added = {a["id"]: a for a in tj.get("added_tokens", [])}
        size = max(n_vocab, max(list(rev) + list(added)) + 1)
        tokens, types = [], []
        for i in range(size):
            if i in added:
                tokens.append(added[i]["content"])
                types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
            elif i in rev:
                tokens.append(rev[i])
                types.append(gguf.TokenType.NORMAL)
            else:
                tokens.append(f"[PAD{i}]")
                types.append(gguf.TokenType.UNUSED)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        kind = f"bpe/{pre}"
    else:
        # SentencePiece (Llama 2, TinyLlama): tokenizer.model, or a byte-fallback tokenizer.json
        try:
            vocab = gguf.SentencePieceVocab(src.folder) if (src.folder / "tokenizer.model").is_file() \
                else gguf.LlamaHfVocab(src.folder)
        except Exception as e:  # noqa: BLE001
            raise BadRequest(f"cannot read the tokenizer of {str(src.folder)!r}: {e.__class__.__name__}: {e}",
                             param="source") from None
        tokens, scores, types = [], [], []
        for text, score, typ in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(typ)
        for i in range(len(tokens), n_vocab):
            tokens.append(f"[PAD{i}]".encode())
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
        size = len(tokens)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        kind = "spm"
    special = gguf.SpecialVocab(src.folder, load_merges=kind.startswith("bpe"), n_vocab=size)
    if special.chat_template is None:
        special.chat_template = src.chat_template()
    ids = special.special_token_ids
    if "bos" not in ids and src.config.get("bos_token_id") is not None:
        special._set_special_token("bos", src.config["bos_token_id"])  # noqa: SLF001
    if "eos" not in ids and src.config.get("eos_token_id") is not None:
        eos = src.config["eos_token_id"]
        special._set_special_token("eos", eos[0] if isinstance(eos, list) else eos)  # noqa: SLF001
    add_bos, add_eos = add_bos_eos(src, ids.get("bos"), ids.get("eos"))
    special.add_special_token["bos"] = add_bos
    special.add_special_token["eos"] = add_eos
    special.add_to_gguf(w, quiet=True)
    return {"kind": kind, "size": size, "special_ids": dict(ids), "add_bos": add_bos, "add_eos": add_eos,
            "chat_template": special.chat_template is not None}


# 3. tensors --------------------------------------------------------------------------------------

def iter_weights(folder: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 array) of every weight in the folder's safetensors (or .bin) files, one at a time."""
    import torch

    files = sorted(folder.glob("*.safetensors"))
    if files:
        from safetensors import safe_open

        for f in files:
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():
                    yield name, st.get_tensor(name).to(torch.float32).numpy()
        return
    for f in sorted(folder.glob("pytorch_model*.bin")):
        for name, t in torch.load(str(f), map_location="cpu", weights_only=True).items():
            yield name, t.to(torch.float32).numpy()


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved-pair layout (the inverse of what
    transformers applies when it reads a llama GGUF)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def gguf_tensors(src: Source) -> Iterator[tuple[str, np.ndarray]]:
    import gguf

    c = src.config
    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == src.arch)
    names = gguf.get_tensor_name_map(arch_enum, int(c["num_hidden_layers"]))
    n_head = int(c["num_attention_heads"])
    n_kv = int(c.get("num_key_value_heads") or n_head)
    tied = bool(c.get("tie_word_embeddings", False))
    seen_output = False
    for name, arr in iter_weights(src.folder):
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name == "lm_head.weight" and tied:
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise BadRequest(f"weight {name!r} has no llama.cpp name for architecture {src.arch!r}; this "
                             f"checkpoint is not a plain {src.hf_arch}.", param="source")
        if src.arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            arr = permute_qk(arr, n_head)
        elif src.arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            arr = permute_qk(arr, n_kv)
        seen_output |= new == "output.weight"
        yield new, arr
    if not tied and not seen_output:
        raise BadRequest("the checkpoint has no lm_head.weight and tie_word_embeddings is false.", param="source")
    _, rope = rope_settings(c)
    if rope["rope_type"] == "llama3":
        yield "rope_freqs.weight", llama3_rope_factors(c)


def write_gguf(src: Source, path: Path, precision: str = "f32") -> dict:
    """Write ``path`` (f32 or f16: 2-D weights in f16, norms/biases f32, as llama.cpp's converter does)."""
    import gguf

    if precision not in ("f32", "f16"):
        raise ValueError(precision)
    ftype = gguf.LlamaFileType.ALL_F32 if precision == "f32" else gguf.LlamaFileType.MOSTLY_F16
    n_vocab = int(src.config["vocab_size"])
    w = gguf.GGUFWriter(str(path), src.arch)
    add_hparams(w, src, n_vocab, ftype)
    tok = add_tokenizer(w, src, n_vocab)
    n_params = 0
    for name, arr in gguf_tensors(src):
        n_params += arr.size
        if precision == "f16" and arr.ndim >= 2:
            w.add_tensor(name, arr.astype(np.float16))
        else:
            w.add_tensor(name, arr.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"tokenizer": tok, "n_params": n_params}


# 4. quantize (llama.cpp's own quantizer) ---------------------------------------------------------

def quantize(src_gguf: Path, dst: Path, quant: str, threads: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant])
    params.nthread = max(1, threads)
    rc = llama_cpp.llama_model_quantize(str(src_gguf).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise RuntimeError(f"llama.cpp's quantizer failed for {quant} (return code {rc})")
