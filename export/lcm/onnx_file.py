"""The LCM components as ONNX graphs: torch.nn wrappers with the runtime's input / output names, example
feeds, dynamic axes, and the TorchScript export of one component."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.lcm.sources import OnDemand, Source, vae_scale_factor

COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder", "taesd_decoder")


PART = {"text_encoder": "text_encoder", "unet": "unet", "vae_decoder": "vae", "vae_encoder": "vae",
        "taesd_decoder": "taesd"}  # component -> the PyTorch module (export.lcm.sources.PARTS) it comes from


def components(src: Source | OnDemand) -> list[str]:
    """The components ``src`` has, in export order."""
    return [c for c in COMPONENTS if src.has(PART[c])]


def wrap(name: str, module) -> Any:
    """A torch module whose forward is component ``name``'s graph interface over ``module`` (eval mode)."""
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids, return_dict=False)[0]

    class UNet(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            from export.attention import HeadSlicedAttnProcessor

            m.set_attn_processor(HeadSlicedAttnProcessor())  # one head's scores at a time: ~1 GB less at 512 px
            self.m = m

        def forward(self, sample, timestep, encoder_hidden_states, timestep_cond):
            return self.m(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False)[0]

    class Decoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, latent_sample):
            return self.m.decode(latent_sample, return_dict=False)[0]

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, sample):
            dist = self.m.encode(sample).latent_dist
            return dist.mean, dist.std

    cls = {"text_encoder": TextEncoder, "unet": UNet, "vae_decoder": Decoder, "vae_encoder": Encoder,
           "taesd_decoder": Decoder}[name]
    return cls(module).eval()


def wrappers(src: Source) -> dict[str, Any]:
    """Component name -> its :func:`wrap` over a Source holding every module."""
    return {name: wrap(name, getattr(src, PART[name])) for name in components(src)}


def sample_inputs(src: Source | OnDemand, name: str, side: int, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Example feeds for a component at image side ``side``."""
    rng = np.random.default_rng(seed)
    f = vae_scale_factor(src)
    lat = side // f
    hidden = src.config("text_encoder").hidden_size
    if name == "text_encoder":
        return {"input_ids": rng.integers(0, len(src.vocab) - 2, size=(batch, 77)).astype(np.int64)}
    if name == "unet":
        return {"sample": rng.standard_normal((batch, 4, lat, lat), dtype=np.float32),
                "timestep": np.array([759], dtype=np.int64),
                "encoder_hidden_states": rng.standard_normal((batch, 77, hidden), dtype=np.float32),
                "timestep_cond": rng.standard_normal((batch, src.config("unet").time_cond_proj_dim), dtype=np.float32)}
    if name in ("vae_decoder", "taesd_decoder"):
        return {"latent_sample": rng.standard_normal((batch, 4, lat, lat), dtype=np.float32)}
    if name == "vae_encoder":
        return {"sample": rng.uniform(-1, 1, size=(batch, 3, side, side)).astype(np.float32)}
    raise KeyError(name)


DYNAMIC_AXES = {
    "text_encoder": {"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"}},
    "unet": {"sample": {0: "batch", 2: "height", 3: "width"}, "encoder_hidden_states": {0: "batch"},
             "timestep_cond": {0: "batch"}, "out_sample": {0: "batch", 2: "height", 3: "width"}},
    "vae_decoder": {"latent_sample": {0: "batch", 2: "height", 3: "width"}, "sample": {0: "batch", 2: "H", 3: "W"}},
    "taesd_decoder": {"latent_sample": {0: "batch", 2: "height", 3: "width"}, "sample": {0: "batch", 2: "H", 3: "W"}},
    "vae_encoder": {"sample": {0: "batch", 2: "H", 3: "W"}, "latent_mean": {0: "batch", 2: "height", 3: "width"},
                    "latent_std": {0: "batch", 2: "height", 3: "width"}},
}
OUTPUT_NAMES = {"text_encoder": ["last_hidden_state"], "unet": ["out_sample"], "vae_decoder": ["sample"],
                "taesd_decoder": ["sample"], "vae_encoder": ["latent_mean", "latent_std"]}


def unet_trace_side(src: Source | OnDemand) -> int:
    """Image side for tracing the UNet whose latent side is NOT a multiple of the UNet's overall
    up-factor: diffusers then passes the skip connections' sizes to every upsampler, so the exported
    graph accepts any latent size (any image side that is a multiple of 8)."""
    up = 2 ** (len(src.config("unet").block_out_channels) - 1)
    lat = 2 * up + 1 if up > 1 else 9
    return lat * vae_scale_factor(src)


def export_component(module, name: str, feeds: dict[str, np.ndarray], path: Path, opset: int) -> Path:
    """torch.onnx.export (TorchScript exporter) -> ``path`` (with ``path.data`` when over 2 GB)."""
    import shutil
    import tempfile

    import torch

    from export.lcm.sources import release_memory
    from export.quantize import move_onnx

    args = tuple(torch.from_numpy(v) for v in feeds.values())
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=path.parent))
    try:
        with torch.inference_mode():
            torch.onnx.export(module, args, str(scratch / "model.onnx"), input_names=list(feeds),
                              output_names=OUTPUT_NAMES[name], dynamic_axes=DYNAMIC_AXES[name],
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        del args
        release_memory()  # the exporter's graph copies, before the weights are streamed into place
        move_onnx(scratch / "model.onnx", path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path
