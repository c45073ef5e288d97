"""Decoder-with-past ONNX export of Llama / Qwen2 chat models, and weight quantization.

optimum-onnx (the usual exporter) pins transformers < 4.58 and cannot be installed beside the
transformers 5 here, so the graph is traced with ``torch.onnx`` from a small forward that reuses the
transformers model's own modules (embedding, RMSNorm, projections, MLP, rotary inverse frequencies)
and writes attention, RoPE and the KV concatenation out explicitly, so the trace has no
data-dependent Python. The graph's interface is optimum's:

  inputs   input_ids [B,S] int64, attention_mask [B,P+S] int64, position_ids [B,S] int64,
           past_key_values.{i}.key / .value [B,n_kv,P,head_dim] float32
  outputs  logits [B,1,vocab] (last position only: the engine never needs more),
           present.{i}.key / .value [B,n_kv,P+S,head_dim]

Quantization (onnxruntime.quantization's MatMulNBits, weight-only, block 32, int8 compute on CPU):
``int8`` = 8-bit blocks everywhere (llama.cpp's q8_0 layout); ``int4`` = 4-bit asymmetric blocks
(q4_1's layout) with the output head at 8 bits. (Dynamic int8 — activations quantized per tensor at run
time — was measured first and loses the model: top-1 0.015 vs transformers on SmolLM2.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "int8", "int4")
OPSET = 17


def build_decoder(hf_model):
    """A torch Module with the ONNX interface above, sharing ``hf_model``'s weights."""
    import torch

    class Decoder(torch.nn.Module):
        def __init__(self, hf):
            super().__init__()
            cfg = hf.config
            self.body, self.lm_head = hf.model, hf.lm_head
            self.n_head = cfg.num_attention_heads
            self.n_kv = cfg.num_key_value_heads or cfg.num_attention_heads
            self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            rot = hf.model.rotary_emb
            self.register_buffer("inv_freq", rot.inv_freq.detach().float().clone(), persistent=False)
            self.rope_scale = float(getattr(rot, "attention_scaling", 1.0))

        def forward(self, input_ids, attention_mask, position_ids, *past):
            b, s = input_ids.shape
            x = self.body.embed_tokens(input_ids)
            # rotary tables for these positions (rotate-half layout, as transformers)
            freqs = position_ids[:, :, None].float() * self.inv_freq[None, None, :]
            emb = torch.cat([freqs, freqs], dim=-1)
            cos = (emb.cos() * self.rope_scale)[:, None]
            sin = (emb.sin() * self.rope_scale)[:, None]
            # causal + padding mask over past + new keys
            p = past[0].shape[2]
            kpos = torch.arange(p + s, device=x.device)
            qpos = torch.arange(s, device=x.device) + p
            keep = (kpos[None, :] <= qpos[:, None])[None, None] & (attention_mask[:, None, None, :] > 0)
            bias = torch.where(keep, torch.zeros((), dtype=x.dtype), torch.full((), -1e9, dtype=x.dtype))
            rep = self.n_head // self.n_kv
            presents = []
            for i, layer in enumerate(self.body.layers):
                h = layer.input_layernorm(x)
                att = layer.self_attn
                q = att.q_proj(h).view(b, s, self.n_head, self.head_dim).transpose(1, 2)
                k = att.k_proj(h).view(b, s, self.n_kv, self.head_dim).transpose(1, 2)
                v = att.v_proj(h).view(b, s, self.n_kv, self.head_dim).transpose(1, 2)
                q = q * cos + _rotate_half(q) * sin
                k = k * cos + _rotate_half(k) * sin
                k = torch.cat([past[2 * i], k], dim=2)
                v = torch.cat([past[2 * i + 1], v], dim=2)
                presents += [k, v]
                if rep > 1:
                    k = k.repeat_interleave(rep, dim=1)
                    v = v.repeat_interleave(rep, dim=1)
                w = torch.matmul(q, k.transpose(-1, -2)) * (self.head_dim ** -0.5) + bias
                o = torch.matmul(torch.softmax(w, dim=-1), v)
                x = x + att.o_proj(o.transpose(1, 2).reshape(b, s, self.n_head * self.head_dim))
                x = x + layer.mlp(layer.post_attention_layernorm(x))
            logits = self.lm_head(self.body.norm(x[:, -1:, :]))
            return (logits, *presents)

    return Decoder(hf_model).eval()


def _rotate_half(t):
    import torch

    half = t.shape[-1] // 2
    return torch.cat([-t[..., half:], t[..., :half]], dim=-1)


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def export_fp32(hf_model, path: Path, opset: int = OPSET) -> None:
    """Trace the decoder (batch 1, 3 new tokens after 4 cached ones) with dynamic batch/sequence/past axes."""
    import torch

    dec = build_decoder(hf_model)
    n_layers = len(hf_model.model.layers)
    ins, outs = io_names(n_layers)
    s, p = 3, 4
    past = [torch.randn(1, dec.n_kv, p, dec.head_dim) for _ in range(2 * n_layers)]
    args = (torch.randint(0, hf_model.config.vocab_size, (1, s)), torch.ones(1, p + s, dtype=torch.long),
            torch.arange(p, p + s)[None], *past)
    dyn = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
           "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}
    for n in ins[3:]:
        dyn[n] = {0: "batch", 2: "past"}
    for n in outs[1:]:
        dyn[n] = {0: "batch", 2: "total"}
    with torch.no_grad():
        torch.onnx.export(dec, args, str(path), dynamo=False, input_names=ins, output_names=outs,
                          dynamic_axes=dyn, opset_version=opset, do_constant_folding=True)
    _to_single_file(path)


def _to_single_file(path: Path) -> None:
    """Keep the model in one file when it fits protobuf's limit, else one ``.data`` file beside it."""
    import onnx

    from export.quantize import save_onnx

    model = onnx.load(str(path), load_external_data=True)
    for extra in path.parent.iterdir():
        if extra != path and extra.suffix not in (".onnx", ".json", ".jinja", ".txt", ".gguf") and extra.is_file() \
                and not extra.name.startswith("."):
            extra.unlink()
    save_onnx(model, path)


def quantize_int4(src: Path, dst: Path, block_size: int = 32) -> None:
    """onnxruntime's MatMulNBits: 4-bit block-wise weights (RTN, asymmetric, block 32 — the layout of
    llama.cpp's q4_1) for every MatMul but the output head, which gets 8-bit blocks (llama.cpp's
    q4_k_m likewise keeps the head at 6 bits); int8 activations on CPU (accuracy_level 4)."""
    import onnx

    from export.quantize import save_onnx

    model = onnx.load(str(src), load_external_data=True)
    head = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.output[0] in _head_outputs(model)]
    model = _nbits(model, bits=4, block_size=block_size, exclude=head)
    if head:
        model = _nbits(model, bits=8, block_size=block_size, include=head)
    save_onnx(model, dst)


def quantize_int8(src: Path, dst: Path, block_size: int = 32) -> None:
    """8-bit block-wise MatMulNBits weights for every MatMul (llama.cpp's q8_0 layout), int8 compute."""
    import onnx

    from export.quantize import save_onnx

    save_onnx(_nbits(onnx.load(str(src), load_external_data=True), bits=8, block_size=block_size), dst)


def _nbits(model, *, bits: int, block_size: int, exclude=None, include=None):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=False, accuracy_level=4,
                             nodes_to_exclude=exclude or [], nodes_to_include=include)
    q.process()
    return q.model.model


def _head_outputs(model) -> set[str]:
    """Outputs of the MatMul producing ``logits`` (possibly through an Add)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    out, seen = set(), "logits"
    for _ in range(3):
        n = producers.get(seen)
        if n is None:
            break
        if n.op_type == "MatMul":
            out.add(n.output[0])
            break
        seen = n.input[0]
    return out


def kv_shape_info(hf_config) -> dict:
    n_head = hf_config.num_attention_heads
    return {"num_layers": hf_config.num_hidden_layers, "num_kv_heads": hf_config.num_key_value_heads or n_head,
            "head_dim": getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_head,
            "vocab_size": hf_config.vocab_size}


def empty_past(info: dict, batch: int = 1) -> dict[str, np.ndarray]:
    z = np.zeros((batch, info["num_kv_heads"], 0, info["head_dim"]), np.float32)
    return {f"past_key_values.{i}.{kv}": z for i in range(info["num_layers"]) for kv in ("key", "value")}
