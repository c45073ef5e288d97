"""The source of a chat-model export: a Hugging Face model folder (or hub id), checked up front, or a
seeded random model (``--random-init``) written as a Hugging Face folder so every later stage is the
same code path. Also :func:`gguf_to_hf`: transformers' own GGUF loader (dequantizing) -> HF folder,
the way real weights reach this machine (no hub here).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import BadRequest

# HF architecture -> llama.cpp architecture name (gguf.MODEL_ARCH_NAMES)
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",      # Llama 1/2/3, SmolLM, SmolLM2, TinyLlama
    "Qwen2ForCausalLM": "qwen2",      # Qwen2, Qwen2.5
}
SUPPORTED_TEXT = "LlamaForCausalLM (Llama 1/2/3, SmolLM, SmolLM2, TinyLlama), Qwen2ForCausalLM (Qwen2, Qwen2.5)"
PRESETS = ("tiny-llama", "tiny-qwen2")
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass
class Source:
    """A checked Hugging Face model folder."""

    folder: Path
    config: dict[str, Any]
    hf_arch: str
    arch: str                 # llama.cpp architecture name
    origin: dict[str, Any]    # what it came from, for the report / manifest

    @property
    def tokenizer_json(self) -> Path | None:
        p = self.folder / "tokenizer.json"
        return p if p.is_file() else None

    def chat_template(self) -> str | None:
        """The chat template as transformers saves it (chat_template.jinja or tokenizer_config.json)."""
        jinja = self.folder / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8")
        cfg = self.tokenizer_config()
        t = cfg.get("chat_template")
        if isinstance(t, list):  # named templates: take "default"
            t = next((x["template"] for x in t if x.get("name") == "default"), t[0]["template"] if t else None)
        return t

    def tokenizer_config(self) -> dict[str, Any]:
        p = self.folder / "tokenizer_config.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


# 1. checks ---------------------------------------------------------------------------------------

def resolve(source: str | None) -> Path:
    """A local folder, or a hub id fetched with huggingface_hub (needs the network or the HF cache)."""
    if not source:
        raise BadRequest("give a source: a Hugging Face model folder or hub id, or --random-init "
                         f"{'|'.join(PRESETS)}.", param="source")
    p = Path(source).expanduser()
    if p.is_dir():
        return p
    if p.suffix == ".gguf" and p.is_file():
        raise BadRequest(f"source {source!r} is a GGUF file; export takes a Hugging Face folder. Load it with "
                         "transformers first (export.llm.source.gguf_to_hf) or use it directly as a chat model.",
                         param="source")
    if source.count("/") == 1 and not p.exists():
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                                  "*.jinja"]))
        except Exception as e:  # noqa: BLE001 - offline, unknown repo, auth ...
            raise BadRequest(f"source {source!r} is not a local folder and could not be fetched from the hub "
                             f"({e.__class__.__name__}: {str(e).splitlines()[0][:160]}). Pass a downloaded "
                             "model folder.", param="source") from None
    raise BadRequest(f"source {source!r} does not exist; pass a Hugging Face model folder (config.json, "
                     "*.safetensors, tokenizer.json) or a hub id.", param="source")


def one_source(source: str | None, random_init: str | None) -> "Source | None":
    """The checked Hugging Face source of an llm recipe, or None for ``--random-init``; BadRequest unless
    exactly one of the two is given."""
    if (source is None) == (random_init is None):
        raise BadRequest("give exactly one source: a Hugging Face model folder / hub id, or --random-init "
                         f"{'|'.join(PRESETS)}.", param="source")
    return None if source is None else check_source(resolve(source))


def check_source(folder: Path, origin: dict[str, Any] | None = None) -> Source:
    """Check architecture, weights and tokenizer files; one clear error for the first problem found."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise BadRequest(f"{str(folder)!r} has no config.json; it is not a Hugging Face model folder.",
                         param="source")
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    archs = config.get("architectures") or [config.get("model_type", "?")]
    hf_arch = next((a for a in archs if a in ARCHITECTURES), None)
    if hf_arch is None:
        raise BadRequest(f"unsupported architecture {archs[0]!r} in {str(cfg_path)!r}; supported: "
                         f"{SUPPORTED_TEXT}.", param="source")
    if not (list(folder.glob("*.safetensors")) or list(folder.glob("pytorch_model*.bin"))):
        raise BadRequest(f"{str(folder)!r} has no weights (*.safetensors or pytorch_model.bin).", param="source")
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()):
        raise BadRequest(f"{str(folder)!r} is missing its tokenizer files: need tokenizer.json (fast "
                         "tokenizer) or tokenizer.model (SentencePiece). Copy them from the model's repository.",
                         param="source")
    return Source(folder=folder, config=config, hf_arch=hf_arch, arch=ARCHITECTURES[hf_arch],
                  origin=origin or {"kind": "folder", "path": str(folder.absolute())})


def load_torch_model(src: Source):
    """The transformers model in float32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(src.folder), dtype=torch.float32)
    return model.eval()


# 2. random init ----------------------------------------------------------------------------------

def _train_tokenizer(text: str, vocab_size: int, qwen_style: bool):
    """A small byte-level BPE trained with the `tokenizers` library on ``text`` (ChatML special tokens)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if qwen_style:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    return tok


def random_init(preset: str, out: Path, *, seed: int = 0) -> Source:
    """Write a seeded random HF model folder for ``preset`` (weights, config, tokenizer, chat template).

    Weights are drawn with a larger spread than transformers' init and (untied presets) the output
    head maps each token to a fixed random successor, so next-token distributions are peaked (a
    near-uniform random model would make top-1 comparisons meaningless)."""
    import torch
    from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config,
                              Qwen2ForCausalLM)

    from export.llm.text import sample_text

    if preset not in PRESETS:
        raise BadRequest(f"unknown --random-init preset {preset!r}; use one of {', '.join(PRESETS)}.",
                         param="random_init")
    qwen = preset == "tiny-qwen2"
    tok = _train_tokenizer(sample_text(), 384, qwen_style=qwen)
    vocab = tok.get_vocab_size()
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if qwen:
        config = Qwen2Config(**common, rope_theta=1000000.0, tie_word_embeddings=True)
        cls = Qwen2ForCausalLM
    else:
        config = LlamaConfig(**common, rope_theta=10000.0, tie_word_embeddings=False)
        cls = LlamaForCausalLM
    torch.manual_seed(seed)
    model = cls(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # qwen2 q/k/v biases
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5 * (8.0 if "embed" in name else 1.0))
        if not config.tie_word_embeddings:
            # next token ~ a fixed random permutation of the current one (plus what attention adds), so
            # distributions are peaked like a trained model's and greedy decoding walks varied tokens
            perm = torch.randperm(vocab, generator=g)
            model.lm_head.weight[perm] = model.model.embed_tokens.weight.clone()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(str(out))
    return check_source(out, {"kind": "random-init", "preset": preset, "seed": seed})


# 3. GGUF -> HF (transformers' loader) -------------------------------------------------------------

def gguf_to_hf(gguf_path: Path, out: Path) -> Path:
    """Load a GGUF with transformers (weights dequantized to float32) and save it as an HF folder.

    This is transformers' own GGUF reader, so the folder is an independent reference for a round trip
    through our exporter."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=torch.float32)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    model.config.quantization_config = None
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = [type(model).__name__]
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    tok.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
