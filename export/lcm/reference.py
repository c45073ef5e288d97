"""The reference an LCM export is held to: diffusers' LatentConsistencyModel(Img2Img)Pipeline over the
same PyTorch components, and a noise source that makes the numpy pipeline draw what diffusers draws."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from export.lcm.sources import Source
from export.lcm.tokenizer import read_tokenizer


def torch_noise(seed: int) -> Callable[[tuple[int, ...]], np.ndarray]:
    """A noise source drawing from ``torch.Generator().manual_seed(seed)`` — the same draws diffusers
    makes with that generator, so the numpy pipeline can be compared with diffusers' exactly."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(tuple(shape), generator=g, dtype=torch.float32).numpy()


def diffusers_pipeline(src: Source, tokenizer_dir: Path, img2img: bool = False):
    """diffusers' LatentConsistencyModel(Img2Img)Pipeline over the same PyTorch components (the reference)."""
    from diffusers import LatentConsistencyModelImg2ImgPipeline, LatentConsistencyModelPipeline, LCMScheduler
    from transformers import CLIPTokenizer

    vocab, merges = read_tokenizer(tokenizer_dir)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    cls = LatentConsistencyModelImg2ImgPipeline if img2img else LatentConsistencyModelPipeline
    pipe = cls(vae=src.vae, text_encoder=src.text_encoder, tokenizer=tok, unet=src.unet,
               scheduler=LCMScheduler.from_config(src.scheduler_config), safety_checker=None,
               feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_image(src: Source, tokenizer_dir: Path, prompt: str, side: int, steps: int, seed: int,
                    guidance_scale: float = 8.0, init_image=None, strength: float = 0.6) -> np.ndarray:
    """uint8 (H, W, 3) from diffusers, with torch.Generator(seed)."""
    import torch

    pipe = diffusers_pipeline(src, tokenizer_dir, img2img=init_image is not None)
    kw = dict(image=init_image, strength=strength) if init_image is not None else dict(height=side, width=side)
    with torch.inference_mode():
        out = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance_scale,
                   generator=[torch.Generator().manual_seed(seed)], output_type="np", **kw).images
    return (out[0] * 255).round().astype(np.uint8)
