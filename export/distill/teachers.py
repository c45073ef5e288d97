"""Tiny teachers for tests and benchmarks (no model hub is reachable here).

Each writes a folder / file in the format a user's real teacher has, so the recipes run the same code
on them as on real models:

* ``llm_teacher``: a Llama-architecture causal LM with a byte-level BPE tokenizer (ChatML chat
  template), trained for a few steps on the shipped public-domain corpus -> HF folder;
* ``sd_teacher``: a Stable-Diffusion-class diffusers pipeline (CLIP text encoder, UNet without the
  w-embedding, KL VAE; real CLIP vocabulary), seeded random or briefly trained on captioned shapes;
* ``sam_teacher``: the upstream MobileSAM architecture (tiny preset of export.recipes.sam_onnx) with
  seeded random weights -> an upstream-format checkpoint (``state_dict`` .pt).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

from export.distill import data as D


# ---------------------------------------------------------------------------------------------- chat LM
def tiny_tokenizer(texts: list[str], vocab_size: int = 512):
    """A byte-level BPE (GPT-2 pre-tokenizer) trained on ``texts`` with ChatML special tokens, as a
    transformers PreTrainedTokenizerFast carrying a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from export.llm.source import CHATML_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def llm_teacher(out: Path, *, layers: int = 4, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                intermediate: int = 192, vocab_size: int = 512, seq_len: int = 64, batch: int = 16,
                steps: int = 150, lr: float = 3e-3, seed: int = 0, held_out: float = 0.1) -> dict:
    """Train a tiny Llama on the shipped corpus (its training split) and save it as an HF folder.
    Returns {"path", "steps", "final_loss", "seconds"}."""
    import time

    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    from export.distill.llm_kd import token_blocks

    t0 = time.perf_counter()
    train_texts, _ = D.corpus_split(D.load_corpus(), held_out)
    tok = tiny_tokenizer(train_texts, vocab_size)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    blocks, _ = token_blocks(tok, train_texts, seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(
        math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        ids = blocks[torch.randint(0, len(blocks), (batch,), generator=g)]
        logits = model(input_ids=ids, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return {"path": out, "steps": steps, "final_loss": float(loss), "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------- text-to-image
# the lcm recipe's test and bench teacher: one that follows its prompts, so the noise LCM injects between
# steps moves a perfect student little (a tiny UNet trained minutes on the richer 'shapes' captions, epsilon
# prediction, frozen text encoder all but ignores the prompt: 4-step samples of one prompt scatter). The
# text encoder is trained too (without it the samples of one prompt scatter ~2.5x more), v-prediction
# learns x0 at high noise, where a sample's content is decided, and 2048 pairs cover most of the 924
# captions, as a real teacher knows the prompts it is distilled and evaluated on.
PROMPT_FOLLOWING = dict(train_steps=3000, images=2048, size=32, captions="simple-shapes",
                        prediction_type="v_prediction", train_text_encoder=True, lr=2e-3, lr_schedule="cosine",
                        warmup_steps=50)


def sd_teacher(out: Path, *, seed: int = 0, prediction_type: str = "epsilon", train_steps: int = 0,
               images: int = 256, size: int = 64, batch: int = 16, lr: float = 1e-3, captions: str = "shapes",
               train_text_encoder: bool = False, lr_schedule: str = "constant", warmup_steps: int = 0) -> dict:
    """A tiny Stable-Diffusion-class teacher (diffusers StableDiffusionPipeline folder): the LCM
    recipe's tiny architecture *without* the w-embedding, the real CLIP BPE vocabulary, a DDIM
    scheduler of SD's betas. The VAE's scaling factor is set so the shapes' latents have unit
    variance (as SD's 0.18215 does for photos). ``train_steps`` > 0 trains the UNet (``prediction_type``
    objective; with ``train_text_encoder`` the text encoder too) on ``images`` pairs of the caption set
    ``captions`` (data.CAPTION_SETS), AdamW at ``lr`` (``lr_schedule`` constant or cosine, after
    ``warmup_steps``), 10% of captions dropped for classifier-free guidance.
    Returns {"path", "final_loss", "seconds"}."""
    import time

    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    from export.lcm.sources import SCHEDULER_CONFIG, random_components

    t0 = time.perf_counter()
    src = random_components("tiny", seed, with_taesd=False)
    unet_cfg = {k: v for k, v in dict(src.unet.config).items() if not k.startswith("_")}
    unet_cfg["time_cond_proj_dim"] = None
    unet = UNet2DConditionModel.from_config(unet_cfg)
    unet.load_state_dict({k: v for k, v in src.unet.state_dict().items() if "cond_proj" not in k}, strict=True)
    out = Path(out)
    tokenizer = CLIPTokenizer(vocab=src.vocab, merges=src.merges, model_max_length=77)
    ids = tokenizer(["a red circle"]).input_ids[0]
    assert ids[0] == src.vocab["<|startoftext|>"] and len(ids) == 5, ids  # the real CLIP BPE, not unknowns
    sched_cfg = {k: SCHEDULER_CONFIG[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                                  "set_alpha_to_one", "clip_sample")}
    scheduler = DDIMScheduler(**sched_cfg, prediction_type=prediction_type, steps_offset=1)
    # 1. a trained VAE's posterior is nearly a point next to the spread of its means; a random one's
    #    log-variance is ~0: a std 4-5x that spread once scaled, so every latent sampled from it (as
    #    distillation does, like diffusers' scripts) would be mostly noise. Pin the log-variance low.
    c = src.vae.config.latent_channels
    with torch.no_grad():
        src.vae.quant_conv.weight[c:].zero_()
        src.vae.quant_conv.bias[c:].fill_(-20.0)  # std e^-10
    # 2. latents of the captioned shapes -> the scaling factor
    pairs = D.CAPTION_SETS[captions](images, size=size, seed=seed + 101)
    pix = torch.from_numpy(np.stack([p for p, _ in pairs])).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        lat = torch.cat([src.vae.encode(pix[i:i + 32]).latent_dist.mean for i in range(0, len(pix), 32)])
    src.vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    final = float("nan")
    # 3. optional denoising training of the UNet on those latents
    if train_steps:
        lat = lat * src.vae.config.scaling_factor
        ids = tokenizer([c for _, c in pairs], padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids
        empty_ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
        te = src.text_encoder
        with torch.no_grad():
            emb, empty = te(ids)[0], te(empty_ids)[0]
        g = torch.Generator().manual_seed(seed)
        params = list(unet.parameters()) + (list(te.parameters()) if train_text_encoder else [])
        opt = torch.optim.AdamW(params, lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)) * (
            0.5 * (1 + math.cos(math.pi * s / train_steps)) if lr_schedule == "cosine" else 1.0))
        acp = scheduler.alphas_cumprod
        unet.train()
        if train_text_encoder:
            te.train().requires_grad_(True)
        for _ in range(train_steps):
            i = torch.randint(0, len(lat), (batch,), generator=g)
            drop = torch.rand(batch, generator=g) < 0.1   # caption dropout: an unconditional model for CFG
            x0 = lat[i]
            if train_text_encoder:
                c = te(torch.where(drop[:, None], empty_ids, ids[i]))[0]
            else:
                c = emb[i].clone()
                c[drop] = empty[0]
            t = torch.randint(0, 1000, (batch,), generator=g)
            noise = torch.randn(x0.shape, generator=g)
            a = acp[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            target = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
            loss = F.mse_loss(unet(xt, t, c).sample, target)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            final = float(loss.detach())
        unet.eval()
        te.eval().requires_grad_(False)
    pipe = StableDiffusionPipeline(vae=src.vae, text_encoder=src.text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(out))
    return {"path": out, "final_loss": final, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------- segmentation
def sam_teacher(out: Path, *, preset: str = "tiny", seed: int = 0) -> Path:
    """export.recipes.sam_onnx's seeded MobileSAM (upstream classes) saved as an upstream-format
    checkpoint: ``torch.save(sam.state_dict())``, like mobile_sam.pt."""
    import torch

    from export.recipes.sam_onnx import build_sam

    sam = build_sam(preset, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(copy.deepcopy(sam.state_dict()), str(out))
    return out
