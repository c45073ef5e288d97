"""The PyTorch side of an LCM export: a diffusers LCM pipeline (folder or hub id), or the real LCM/SD1.5
architectures (CLIPTextModel, UNet2DConditionModel with time_cond_proj_dim, AutoencoderKL,
AutoencoderTiny) with seeded random weights and the real CLIP BPE vocabulary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.lcm.tokenizer import clip_vocab_from_bpe, open_clip_bpe_path, tokenizer_merges

PRESETS = ("tiny", "sd15")
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                    "beta_schedule": "scaled_linear", "original_inference_steps": 50, "set_alpha_to_one": True,
                    "prediction_type": "epsilon", "timestep_scaling": 10.0, "clip_sample": False}


@dataclass
class Source:
    """The PyTorch components and everything the manifest needs to describe them."""

    text_encoder: Any
    unet: Any
    vae: Any
    taesd: Any | None
    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    scheduler_config: dict
    model_id: str
    info: dict = field(default_factory=dict)


def random_components(preset: str, seed: int, with_taesd: bool = True) -> Source:
    """The real LCM/SD1.5 architectures with seeded random weights (``tiny``: seconds, for tests;
    ``sd15``: full size, for benchmarks)."""
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab, merges = clip_vocab_from_bpe(open_clip_bpe_path())
    torch.manual_seed(seed)  # construction order fixes the weights: keep it (benches rebuild and compare)
    if preset == "tiny":
        te_cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      projection_dim=32)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, time_cond_proj_dim=32)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                            block_out_channels=(8, 16, 16, 16), norm_num_groups=8, sample_size=64,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        taesd = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)) if with_taesd else None
    elif preset == "sd15":
        te_cfg = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      projection_dim=768)
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                    time_cond_proj_dim=256)  # defaults are SD1.5's; + LCM's w-embedding input
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                            block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=512,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        taesd = AutoencoderTiny() if with_taesd else None  # defaults are TAESD's architecture
    else:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    cfg = CLIPTextConfig(vocab_size=len(vocab), max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"], **te_cfg)
    cfg._attn_implementation = "eager"
    text_encoder = CLIPTextModel(cfg)
    for m in (text_encoder, unet, vae) + ((taesd,) if taesd is not None else ()):
        m.eval()
    return Source(text_encoder, unet, vae, taesd, vocab, merges, dict(SCHEDULER_CONFIG),
                  model_id=f"lcm-{preset}-random",
                  info={"kind": "random-init", "preset": preset, "seed": seed, "license": "Apache-2.0"})


def load_components(source: str, revision: str | None, taesd: str | None) -> Source:
    """A diffusers LCM pipeline (folder or hub id) -> Source; the tokenizer's vocab/merges are reused."""
    from diffusers import AutoencoderTiny, LatentConsistencyModelPipeline

    pipe = LatentConsistencyModelPipeline.from_pretrained(source, revision=revision, safety_checker=None,
                                                          requires_safety_checker=False)
    tok = pipe.tokenizer
    vocab = dict(tok.get_vocab())
    merges = tokenizer_merges(tok)
    t = None
    if taesd and taesd != "random":
        t = AutoencoderTiny.from_pretrained(taesd).eval()
    elif taesd == "random":
        t = AutoencoderTiny().eval()
    pipe.text_encoder.config._attn_implementation = "eager"
    cfg = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    return Source(pipe.text_encoder.eval(), pipe.unet.eval(), pipe.vae.eval(), t, vocab, merges, cfg,
                  model_id=Path(source).name.lower().replace("_", "-"),
                  info={"kind": "diffusers", "source": source, "revision": revision, "taesd": taesd})


def vae_scale_factor(src: Source) -> int:
    """Image pixels per latent pixel (8 for SD1.5's VAE)."""
    return 2 ** (len(src.vae.config.block_out_channels) - 1)
