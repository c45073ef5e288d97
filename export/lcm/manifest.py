"""The edge-model.json of an LCM export (a typed :class:`edge.manifest.ImageManifest`), and the
runtime's components over an export folder."""

from __future__ import annotations

from pathlib import Path

from edge.manifest import SIZE_MULTIPLE, DecoderInfo, ImageManifest, UNetInfo, VaeInfo
from export.lcm.sources import OnDemand, Source, vae_scale_factor
from export.verify import finite


def image_manifest(src: Source | OnDemand, model_id: str, files: dict[str, dict[str, str]], default_precision: str,
                   report: dict) -> ImageManifest:
    """The manifest of ``files`` (precision -> component -> path); ``report`` gives sizes and verify figures."""
    unet, vae = src.config("unet"), src.config("vae")
    decoders = {"vae": DecoderInfo(scaling_factor=float(vae.scaling_factor))}
    if src.has("taesd"):
        decoders["taesd"] = DecoderInfo(scaling_factor=float(src.config("taesd").scaling_factor))
    precisions = report["precisions"]
    return ImageManifest(
        id=model_id, format="onnx", family="lcm", recipe="lcm", source=src.info, precision=default_precision,
        precisions=files, tokenizer="tokenizer/tokenizer.json", scheduler=src.scheduler_config,
        unet=UNetInfo(time_cond_proj_dim=int(unet.time_cond_proj_dim),
                      in_channels=int(unet.in_channels),
                      cross_attention_dim=int(unet.cross_attention_dim)),
        vae=VaeInfo(scaling_factor=float(vae.scaling_factor), scale_factor=vae_scale_factor(src),
                    latent_channels=int(vae.latent_channels)),
        decoders=decoders, default_decoder="vae", size_multiple=SIZE_MULTIPLE,
        default_size=int(unet.sample_size) * vae_scale_factor(src),
        # bytes of the files each precision loads (the folder holds all precisions; a RAM estimate wants this)
        load_bytes={p: r["bytes"] for p, r in precisions.items()},
        verify={p: {"image_max_diff_255": r["image"]["max_diff_255"], "image_psnr": finite(r["image"]["psnr"])}
                for p, r in precisions.items()})


def runtime_components(manifest: ImageManifest, folder: Path, precision: str, threads: int):
    """edge/image Components over the exported ONNX files (what the runtime will run): onnxruntime's CPU EP, and
    the OpenVINO runtime for a precision with OpenVINO IR files (int8-ov)."""
    from edge.image.engine import components_from_manifest

    ir = any(str(rel).endswith(".xml") for rel in manifest.precisions.get(precision, {}).values())
    return components_from_manifest(manifest, folder, precision=precision, threads=threads,
                                    device="auto" if ir else "cpu")
