"""llm-kd: logit distillation of a causal language model into a smaller student.

The student is the teacher's architecture with fewer decoder layers (taken evenly from the teacher,
first and last included, or ``--keep-layers``) and optionally narrower: ``--intermediate-size`` (MLP
neurons) and ``--hidden-size`` (residual channels; attention heads keep their size) keep the teacher's
neurons / channels with the largest weight norms (the width pruning of Minitron, Muralidharan et al.
2024, with a weight-norm importance). It starts as a copy of those teacher weights and is trained on the teacher's next-token distributions over a text corpus with the forward
KL divergence KL(p_teacher || p_student) at temperature T (scaled by T^2, Hinton et al. 2015),
optionally mixed with the plain next-token loss (``--ce-weight``).

Before and after training the student is measured on held-out text: KL to the teacher (T = 1),
perplexity, and top-1 agreement with the teacher. The output is a Hugging Face folder (weights,
config, tokenizer) that `edge-run export llm` takes.

    edge-run distill llm-kd --teacher ./SmolLM2-360M-Instruct --layers 16 --out ./student
    accelerate launch -m export.distill llm-kd --config kd.toml        # same code, many GPUs
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.distill.common import TrainConfig, Trainer, opt, require_path

HELP = "causal-LM logit distillation: fewer layers / narrower MLP student, forward KL with temperature -> HF folder"


@dataclass
class Config(TrainConfig):
    teacher: str | None = opt(None, "the teacher: a Hugging Face causal-LM folder (config, weights, tokenizer)")
    layers: int | None = opt(None, "student decoder layers, taken evenly from the teacher's (default: half)")
    keep_layers: str | None = opt(None, "teacher layer indices the student starts from, e.g. '0,3,5' (overrides --layers)")
    intermediate_size: int | None = opt(None, "student MLP width (default: the teacher's); keeps the strongest neurons")
    hidden_size: int | None = opt(None, "student residual width (default: the teacher's); keeps the strongest channels, "
                                        "attention heads keep their size")
    text: str | None = opt(None, "training text: a .txt file or a folder of .txt files (default: the shipped "
                                 "public-domain corpus)")
    held_out: float = opt(0.1, "share of each document's paragraphs held out for the evaluation")
    seq_len: int = opt(128, "tokens per training sequence")
    temperature: float = opt(2.0, "softmax temperature of the KL term (the term is scaled by T^2)")
    ce_weight: float = opt(0.0, "weight of the next-token cross-entropy mixed into the loss (0 = pure distillation)")
    eval_batch: int = opt(8, "sequences per evaluation batch")
    lr: float = opt(2e-4, "peak learning rate (AdamW)")


# ---------------------------------------------------------------------------------------------- student
def decoder_layers_prefix(model) -> str:
    """Parameter-name prefix of the decoder-layer list ("model.layers", "transformer.h" ...): the
    ModuleList holding ``num_hidden_layers`` blocks with the most parameters."""
    import torch

    n = model.config.num_hidden_layers
    best, size = None, -1
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            s = sum(p.numel() for p in mod.parameters())
            if s > size:
                best, size = name, s
    if best is None:
        raise ValueError(f"cannot find the {n} decoder layers of {type(model).__name__}")
    return best


def choose_layers(n_teacher: int, layers: int | None, keep_layers: str | None) -> list[int]:
    """Teacher layer indices for the student: explicit, or ``layers`` evenly spaced (first and last kept)."""
    from edge.errors import BadRequest

    if keep_layers:
        try:
            keep = [int(x) for x in re.split(r"[,\s]+", keep_layers.strip()) if x]
        except ValueError:
            raise BadRequest(f"--keep-layers {keep_layers!r} must be comma-separated layer numbers, e.g. 0,2,5.",
                             param="--keep-layers") from None
        bad = [k for k in keep if not 0 <= k < n_teacher]
        if not keep or bad or len(set(keep)) != len(keep):
            raise BadRequest(f"--keep-layers {keep_layers!r} must list distinct layers between 0 and {n_teacher - 1}.",
                             param="--keep-layers")
        return keep
    k = layers if layers is not None else max(1, n_teacher // 2)
    if not 1 <= k <= n_teacher:
        raise BadRequest(f"--layers must be between 1 and the teacher's {n_teacher}, got {k}.", param="--layers")
    if k == 1:
        return [n_teacher - 1]
    return sorted({round(i * (n_teacher - 1) / (k - 1)) for i in range(k)})


def neuron_importance(layer_tensors: dict[str, Any], width: int) -> Any:
    """Per-neuron importance of an MLP of ``width`` neurons: the summed squared weights of every
    tensor slice that belongs to the neuron (rows of up/gate, columns of down, biases)."""
    import torch

    score = torch.zeros(width)
    for t in layer_tensors.values():
        for dim, size in enumerate(t.shape):
            if size == width:
                score += t.detach().float().pow(2).transpose(0, dim).reshape(width, -1).sum(1)
    return score


def _narrow(cfg, name: str, value: int | None, flag: str, teacher_name: str) -> int | None:
    """Set cfg.<name> = value after checking it; returns the teacher's value."""
    from edge.errors import BadRequest

    t_val = getattr(cfg, name, None)
    if value is None or value == t_val:
        return t_val
    if t_val is None:
        raise BadRequest(f"{flag}: {teacher_name} has no {name} to narrow.", param=flag)
    if not 1 <= value <= t_val:
        raise BadRequest(f"{flag} must be between 1 and the teacher's {t_val}, got {value}.", param=flag)
    setattr(cfg, name, value)
    return t_val


def build_student(teacher, keep: list[int], intermediate_size: int | None = None, hidden_size: int | None = None):
    """A student of the teacher's class with the layers ``keep`` (copied) and optionally a narrower
    MLP / residual stream (the strongest neurons' / channels' weights copied). Returns (student, info)."""
    import torch
    from transformers import AutoModelForCausalLM

    from edge.errors import BadRequest

    cfg = copy.deepcopy(teacher.config)
    n_t = cfg.num_hidden_layers
    cfg.num_hidden_layers = len(keep)
    for key in ("layer_types", "block_types"):  # per-layer lists (sliding / full attention ...)
        v = getattr(cfg, key, None)
        if isinstance(v, (list, tuple)) and len(v) == n_t:
            setattr(cfg, key, [v[i] for i in keep])
    name = type(teacher).__name__
    t_hidden = cfg.hidden_size
    t_head_dim = getattr(cfg, "head_dim", None) or t_hidden // cfg.num_attention_heads
    t_inter = _narrow(cfg, "intermediate_size", intermediate_size, "--intermediate-size", name)
    _narrow(cfg, "hidden_size", hidden_size, "--hidden-size", name)
    s_inter, s_hidden = getattr(cfg, "intermediate_size", None), cfg.hidden_size
    if (s_inter != t_inter or s_hidden != t_hidden) and t_inter == t_hidden:
        raise BadRequest("the teacher's MLP width equals its hidden size, so neurons and channels cannot be told "
                         "apart by shape; narrow neither.", param="--intermediate-size")
    if s_hidden != t_hidden:
        if not hasattr(cfg, "head_dim"):
            raise BadRequest(f"--hidden-size: {name} derives its head size from the hidden size; keep the width.",
                             param="--hidden-size")
        cfg.head_dim = t_head_dim  # heads keep their size: only the residual stream narrows
    dtype = next(teacher.parameters()).dtype
    student = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    prefix = decoder_layers_prefix(teacher) + "."
    t_sd = teacher.state_dict()
    pat = re.compile(re.escape(prefix) + r"(\d+)\.(.+)")
    per_layer: dict[int, dict[str, Any]] = {}
    for key, t in t_sd.items():
        m = pat.fullmatch(key)
        if m:
            per_layer.setdefault(int(m.group(1)), {})[m.group(2)] = t
    channels = None
    if s_hidden != t_hidden:  # one channel set for the whole residual stream
        stream = {k: v for k, v in t_sd.items() if "embed" in k or "lm_head" in k or k.endswith("norm.weight")}
        channels = torch.sort(torch.topk(neuron_importance(stream, t_hidden), s_hidden).indices).values
    neurons: dict[int, Any] = {}
    new_sd, sliced = {}, 0
    for key, s in student.state_dict().items():
        m = pat.fullmatch(key)
        j = keep[int(m.group(1))] if m else None
        t = t_sd[f"{prefix}{j}.{m.group(2)}" if m else key]
        if t.shape != s.shape:
            for dim, (a, b) in enumerate(zip(t.shape, s.shape)):
                if a == b:
                    continue
                if a == t_hidden and b == s_hidden and channels is not None:
                    idx = channels
                elif a == t_inter and b == s_inter and j is not None:
                    if j not in neurons:
                        neurons[j] = torch.sort(torch.topk(neuron_importance(per_layer[j], t_inter), s_inter)
                                                .indices).values
                    idx = neurons[j]
                else:
                    raise ValueError(f"cannot map {key}: teacher {tuple(t.shape)} vs student {tuple(s.shape)}")
                t = t.index_select(dim, idx.to(t.device))
            sliced += 1
        new_sd[key] = t.clone()
    student.load_state_dict(new_sd, strict=True)
    if getattr(teacher, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher.generation_config)
    info = {"teacher_layers": n_t, "student_layers": len(keep), "kept_layers": keep,
            "teacher_hidden_size": t_hidden, "student_hidden_size": s_hidden,
            "teacher_intermediate_size": t_inter, "student_intermediate_size": s_inter,
            "sliced_tensors": sliced, "teacher_params": sum(p.numel() for p in teacher.parameters()),
            "student_params": sum(p.numel() for p in student.parameters())}
    return student, info


# ---------------------------------------------------------------------------------------------- data
def token_blocks(tokenizer, texts: list[str], seq_len: int, drop_last: bool = True):
    """Concatenate the texts (EOS between them) and cut into rows of ``seq_len`` tokens -> LongTensor
    (N, seq_len); with ``drop_last=False`` the rest is one shorter row, returned separately."""
    import torch

    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"]
        if eos is not None:
            ids.append(eos)
    n = len(ids) // seq_len
    blocks = torch.tensor(ids[:n * seq_len], dtype=torch.long).view(n, seq_len)
    rest = torch.tensor(ids[n * seq_len:], dtype=torch.long)[None] if not drop_last and len(ids) % seq_len > 1 else None
    return blocks, rest


def kd_loss(student_logits, teacher_logits, temperature: float):
    """Forward KL(p_teacher^T || p_student^T) per token, mean over tokens, times T^2."""
    import torch.nn.functional as F

    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits.float() / t, -1), F.log_softmax(teacher_logits.float() / t, -1),
                  log_target=True, reduction="none").sum(-1)
    return kl.mean() * t * t


def evaluate(student, teacher, batches: list) -> dict:
    """On held-out token rows: mean KL(p_teacher || p_student) at T = 1, the student's and teacher's
    perplexity, and how often their top-1 next tokens agree (every position that has a next token)."""
    import torch
    import torch.nn.functional as F

    student.eval()
    kl_sum = ce_s = ce_t = agree = n = 0.0
    with torch.no_grad():
        for ids in batches:
            dev = next(student.parameters()).device
            ids = ids.to(dev)
            s = student(input_ids=ids, use_cache=False).logits[:, :-1].float()
            t = teacher(input_ids=ids, use_cache=False).logits[:, :-1].float()
            y = ids[:, 1:]
            ls, lt = F.log_softmax(s, -1), F.log_softmax(t, -1)
            kl_sum += float((lt.exp() * (lt - ls)).sum())
            ce_s += float(F.nll_loss(ls.flatten(0, 1), y.flatten(), reduction="sum"))
            ce_t += float(F.nll_loss(lt.flatten(0, 1), y.flatten(), reduction="sum"))
            agree += float((s.argmax(-1) == t.argmax(-1)).sum())
            n += y.numel()
    return {"kl": kl_sum / n, "perplexity": math.exp(ce_s / n), "teacher_perplexity": math.exp(ce_t / n),
            "top1_agreement": agree / n, "tokens": int(n)}


def eval_batches(held_blocks, rest, batch: int) -> list:
    out = [held_blocks[i:i + batch] for i in range(0, len(held_blocks), batch)]
    if rest is not None:
        out.append(rest)
    return out


# ---------------------------------------------------------------------------------------------- run
def load_teacher(path: Path):
    """(model, tokenizer) from a Hugging Face folder, in float32 on the CPU, frozen."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edge.errors import BadRequest

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise BadRequest(f"--teacher {str(path)!r} is not a Hugging Face causal-LM folder with a tokenizer: "
                         f"{str(e).splitlines()[0][:200]}", param="--teacher") from None
    model.eval().requires_grad_(False)
    return model, tok


def run(cfg: Config, *, stop_after: int | None = None) -> Path:
    """Build the student, distil, evaluate before/after, write the HF folder. Returns its path."""
    from edge.errors import BadRequest
    from export.distill import data as D

    # 1. check inputs
    teacher_dir = require_path(cfg.teacher, "--teacher", "a Hugging Face causal-LM folder")
    if not 0 <= cfg.held_out < 1:
        raise BadRequest(f"--held-out must be in [0, 1), got {cfg.held_out}.", param="--held-out")
    if cfg.temperature <= 0:
        raise BadRequest(f"--temperature must be > 0, got {cfg.temperature}. Use 1-4.", param="--temperature")
    if not 0 <= cfg.ce_weight <= 1:
        raise BadRequest(f"--ce-weight must be in [0, 1], got {cfg.ce_weight}.", param="--ce-weight")
    if cfg.seq_len < 2:
        raise BadRequest(f"--seq-len must be >= 2, got {cfg.seq_len}.", param="--seq-len")
    if cfg.text:
        require_path(cfg.text, "--text", "a .txt file or a folder of .txt files")
    tr = Trainer(cfg, "llm-kd")

    # 2. teacher, student, data
    teacher, tok = load_teacher(teacher_dir)
    keep = choose_layers(teacher.config.num_hidden_layers, cfg.layers, cfg.keep_layers)
    student, desc = build_student(teacher, keep, cfg.intermediate_size, cfg.hidden_size)
    train_texts, held_texts = D.corpus_split(D.load_corpus(cfg.text), cfg.held_out)
    train_blocks, _ = token_blocks(tok, train_texts, cfg.seq_len)
    if len(train_blocks) == 0:
        raise BadRequest(f"the training text is shorter than --seq-len {cfg.seq_len} tokens; give more text or a "
                         "smaller --seq-len.", param="--seq-len")
    held_blocks, rest = token_blocks(tok, held_texts, cfg.seq_len, drop_last=False)
    held = eval_batches(held_blocks, rest, cfg.eval_batch)
    teacher.to(tr.device)
    model, _ = tr.setup(student)

    # 3. distil
    def loss_fn(step: int):
        import torch
        import torch.nn.functional as F

        ids = train_blocks[tr.batch_indices(step, len(train_blocks))].to(tr.device)
        with torch.no_grad(), tr.acc.autocast():
            t_logits = teacher(input_ids=ids, use_cache=False).logits
        s_logits = model(input_ids=ids, use_cache=False).logits
        kl = kd_loss(s_logits, t_logits, cfg.temperature)
        metrics = {"kd": kl.detach()}
        loss = kl
        if cfg.ce_weight:
            ce = F.cross_entropy(s_logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
            loss = (1 - cfg.ce_weight) * kl + cfg.ce_weight * ce
            metrics["ce"] = ce.detach()
        return loss, metrics

    report = tr.fit(loss_fn, evaluate=(lambda: evaluate(tr.unwrap(), teacher, held)) if held else None,
                    stop_after=stop_after)
    if "stopped_at_step" in report:
        return tr.out
    report.update(student=desc, teacher=str(teacher_dir.absolute()),
                  data={"train_sequences": len(train_blocks), "held_out_tokens": sum(b.numel() for b in held)})

    # 4. write the HF folder
    def write(tmp: Path) -> None:
        m = tr.unwrap()
        m.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))

    out = tr.write_output(report, write)
    tr.end()
    return out
