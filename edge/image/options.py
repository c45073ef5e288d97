"""What an image model loads with on this device: its precision and the decoder of requests that name
none -- the settings' (EDGE_IMAGE_PRECISION / EDGE_IMAGE_DECODER, or the device profile's) when the model
has them, else the model's own -- each with why. The Runtime, the image door and `edge-run devices` ask
here, so they agree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.manifest import ImageManifest


@dataclass(frozen=True)
class ImageOptions:
    """What an image model is loaded with on this device: the precision and the decoder a request without
    one gets, each with why (the settings' / profile's choice when the model has it, else the model's)."""

    precision: str
    decoder: str
    precision_why: str
    decoder_why: str


def image_options(manifest: "ImageManifest", *, precision: str | None = None,
                  decoder: str | None = None, device: str = "auto") -> ImageOptions:
    """The precision and default decoder of ``manifest`` given the wanted ones (EDGE_IMAGE_PRECISION /
    EDGE_IMAGE_DECODER or the profile's; None = the model's defaults). A wanted one the model lacks falls
    back to the model's default, and the reason says so. With none wanted and ``device`` auto, a CPU where
    OpenVINO computes in bf16 gets the precision fastest there (``_fastest_here``)."""
    default_p = manifest.precision or "fp32"
    if precision is None:
        p, p_why = _fastest_here(manifest, device) or (default_p, "the model's default precision")
    elif precision in manifest.precisions:
        p, p_why = precision, f"{precision} asked (setting or profile)"
    else:
        have = ", ".join(sorted(manifest.precisions)) or "none listed"
        p, p_why = default_p, f"{precision} asked but the model has only {have}; using its default {default_p}"
    files = manifest.precisions.get(p, {})
    decoders = available_decoders(manifest, files)
    if decoder is None:
        d, d_why = manifest.default_decoder, "the model's default decoder"
    elif decoder in decoders:
        d, d_why = decoder, f"{decoder} asked (setting or profile)"
    else:
        d, d_why = manifest.default_decoder, (f"{decoder} asked but the model's {p} files have only "
                                              f"{', '.join(decoders)}; using its default {manifest.default_decoder}")
    return ImageOptions(p, d, p_why, d_why)


def _fastest_here(manifest: "ImageManifest", device: str) -> tuple[str, str] | None:
    """Where ``auto`` runs float graphs on OpenVINO in bf16 (edge.devices.cpu_backend), the precision that is
    fastest there when the model has it: int8-ov (OpenVINO's int8, 1.44-1.56 s a 512x512 UNet step on an AVX-512
    VNNI / BF16 CPU), else fp32 in bf16 (2.20 s) -- both ahead of onnxruntime's int8-winograd (3.73 s), same run.
    None elsewhere: the model's default stands."""
    from edge.devices import prefers_openvino

    if device != "auto" or manifest.precision in ("int8-ov", "fp32") or not prefers_openvino():
        return None
    for p in ("int8-ov", "fp32"):
        if p in manifest.precisions:
            return p, f"{p} on OpenVINO: faster than the model's default {manifest.precision} on this CPU (bf16)"
    return None


def available_decoders(manifest: "ImageManifest", files: dict[str, str]) -> tuple[str, ...]:
    """The decoders a precision's files provide (the VAE's always)."""
    return tuple(d for d in manifest.decoders if d == "vae" or f"{d}_decoder" in files) or ("vae",)
