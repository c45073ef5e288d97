"""The reference an LCM export is held to: diffusers' LatentConsistencyModel(Img2Img)Pipeline over the
same PyTorch components, and a noise source that makes the numpy pipeline draw what diffusers draws."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from export.lcm.sources import OnDemand, Source
from export.lcm.tokenizer import read_tokenizer


def torch_noise(seed: int) -> Callable[[tuple[int, ...]], np.ndarray]:
    """A noise source drawing from ``torch.Generator().manual_seed(seed)`` — the same draws diffusers
    makes with that generator, so the numpy pipeline can be compared with diffusers' exactly."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(tuple(shape), generator=g, dtype=torch.float32).numpy()


def diffusers_pipeline(src: Source, tokenizer_dir: Path, img2img: bool = False, **modules):
    """diffusers' LatentConsistencyModel(Img2Img)Pipeline over the same PyTorch components (the reference);
    ``modules`` (text_encoder=, unet=, vae=) replace ``src``'s, None leaving one out."""
    from diffusers import LatentConsistencyModelImg2ImgPipeline, LatentConsistencyModelPipeline, LCMScheduler
    from transformers import CLIPTokenizer

    vocab, merges = read_tokenizer(tokenizer_dir)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    cls = LatentConsistencyModelImg2ImgPipeline if img2img else LatentConsistencyModelPipeline
    parts = {p: modules[p] if p in modules else getattr(src, p) for p in ("text_encoder", "unet", "vae")}
    pipe = cls(tokenizer=tok, scheduler=LCMScheduler.from_config(src.scheduler_config), safety_checker=None,
               feature_extractor=None, requires_safety_checker=False, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_image(src: Source | OnDemand, tokenizer_dir: Path, prompt: str, side: int, steps: int, seed: int,
                    guidance_scale: float = 8.0, init_image=None, strength: float = 0.6) -> np.ndarray:
    """uint8 (H, W, 3) from diffusers, with torch.Generator(seed). diffusers' own encode_prompt runs with
    the text encoder alone, then its denoising loop and decode with the UNet and VAE (the same computation
    as one pipeline call, without the three modules in memory at once)."""
    import torch

    img2img = init_image is not None
    with torch.inference_mode():
        with src.using("text_encoder") as te:
            pipe = diffusers_pipeline(src, tokenizer_dir, img2img, text_encoder=te, unet=None, vae=None)
            embeds, _ = pipe.encode_prompt(prompt, torch.device("cpu"), 1, False)
            del pipe
        with src.using("unet") as unet, src.using("vae") as vae:
            pipe = diffusers_pipeline(src, tokenizer_dir, img2img, text_encoder=None, unet=unet, vae=vae)
            kw = dict(image=init_image, strength=strength) if img2img else dict(height=side, width=side)
            out = pipe(prompt_embeds=embeds, num_inference_steps=steps, guidance_scale=guidance_scale,
                       generator=[torch.Generator().manual_seed(seed)], output_type="np", **kw).images
            del pipe
    return (out[0] * 255).round().astype(np.uint8)
