"""Calibration data for the static QDQ precision: UNet inputs recorded while the fp32 export renders."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.lcm.manifest import image_manifest, runtime_components
from export.lcm.sources import OnDemand, Source, release_memory
from export.lcm.verify import VERIFY_PROMPT


def calibration_feeds(src: Source | OnDemand, folder: Path, fp32_files: dict[str, str], side: int, steps: int,
                      threads: int, prompts: tuple[str, ...] = (VERIFY_PROMPT, "a red car in the rain",
                                                                "portrait of an old fisherman")) -> list[dict]:
    """UNet inputs recorded while the fp32 edge pipeline renders a few prompts (for static QDQ)."""
    from edge.image.pipeline import ImageRequest, LCMPipeline

    m = image_manifest(src, "calib", {"fp32": fp32_files}, "fp32", {"precisions": {}})
    comps = runtime_components(m, folder, "fp32", threads)
    recorded: list[dict] = []
    unet = comps.unet

    def recording_unet(**feeds):
        recorded.append({k: np.array(v) for k, v in feeds.items()})
        return unet(**feeds)

    comps.unet = recording_unet
    pipe = LCMPipeline(comps, model_id="calib")
    for i, prompt in enumerate(prompts):
        gen = pipe.generate_steps(ImageRequest(prompt=prompt, width=side, height=side, steps=steps, seed=i))
        for step in gen:
            if step.kind == "unet" and step.data.get("step") == step.data.get("steps"):
                gen.close()  # every UNet input is recorded: the decode (and the VAE decoder's session) is not needed
                break
    del pipe, comps, unet
    release_memory()
    return recorded
