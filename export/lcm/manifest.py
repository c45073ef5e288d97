"""The edge-model.json of an LCM export, and the runtime's components over an export folder."""

from __future__ import annotations

from pathlib import Path

from export.lcm.sources import Source, vae_scale_factor


def image_manifest(src: Source, model_id: str, files: dict[str, dict[str, str]], default_precision: str,
                   report: dict) -> dict:
    """The manifest of ``files`` (precision -> component -> path); ``report`` gives sizes and verify figures."""
    decoders = {"vae": {"scaling_factor": float(src.vae.config.scaling_factor)}}
    if src.taesd is not None:
        decoders["taesd"] = {"scaling_factor": float(src.taesd.config.scaling_factor)}
    return {
        "schema": 1, "id": model_id, "task": "image", "format": "onnx", "family": "lcm", "recipe": "lcm",
        "source": src.info, "precision": default_precision, "precisions": files,
        "tokenizer": "tokenizer/tokenizer.json", "scheduler": src.scheduler_config,
        "unet": {"time_cond_proj_dim": int(src.unet.config.time_cond_proj_dim),
                 "in_channels": int(src.unet.config.in_channels),
                 "cross_attention_dim": int(src.unet.config.cross_attention_dim)},
        "vae": {"scaling_factor": float(src.vae.config.scaling_factor), "scale_factor": vae_scale_factor(src),
                "latent_channels": int(src.vae.config.latent_channels)},
        "decoders": decoders, "default_decoder": "vae", "size_multiple": 8,
        "default_size": int(src.unet.config.sample_size) * vae_scale_factor(src),
        # bytes of the files each precision loads (the folder holds all precisions; a RAM estimate wants this)
        "load_bytes": {p: r.get("bytes") for p, r in report["precisions"].items()},
        "verify": {p: {"image_max_diff_255": r.get("image", {}).get("max_diff_255"),
                       "image_psnr": r.get("image", {}).get("psnr")} for p, r in report["precisions"].items()},
    }


def runtime_components(src_manifest: dict, folder: Path, precision: str, threads: int):
    """edge/image Components over the exported ONNX files (what the runtime will run)."""
    from edge.image.engine import components_from_manifest

    return components_from_manifest(src_manifest, folder, precision=precision, threads=threads, device="cpu")
