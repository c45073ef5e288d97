"""The reduced precisions of an LCM export: which components each rewrites and how (int8 dynamic,
fp16, static QDQ, Winograd convolutions), from the fp32 files."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from export.lcm.onnx_file import COMPONENTS
from export.winograd import Rule

PRECISIONS = ("fp32", "int8", "int8-conv", "winograd", "int8-winograd", "fp16", "qdq", "int8-ov")
DEFAULT_PRECISIONS = "fp32,int8,fp16"
# which components each reduced precision rewrites; the others are shared with fp32 (no duplicate files)
# int8: MatMul/Gemm only (attention and projections; convolutions stay fp32); int8-conv: convolutions too
# (about 4x smaller UNet: what fits a 2 GB device)
# winograd: fp32, the 3x3 convolutions that see >= 16 px a side at the reference size computed by Winograd
# F(4x4 or 2x2, 3x3) (export/winograd.py: up to 4x fewer products, larger weights); int8-winograd: int8-conv
# with the convolutions of >= 32 px a side as Winograd on int16 / int8 transformed weights (fast and within
# 2 GB); both use the winograd VAE decoder and encoder (fp32). TAESD stays direct: at 64 channels its
# products are too small for the transforms to pay off (measured slower).
# int8-ov: the UNet as NNCF post-training int8 in OpenVINO IR (unet.xml + unet.bin), calibrated on the UNet inputs
# the fp32 export records while rendering (the qdq calibration set); the other components stay the fp32 .onnx,
# which OpenVINO (--device openvino) reads directly. Only the OpenVINO runtime loads the IR (--device auto picks it).
QUANTIZED = {"int8": ("text_encoder", "unet"), "int8-conv": ("text_encoder", "unet"), "fp16": COMPONENTS,
             "qdq": ("unet",), "int8-ov": ("unet",), "winograd": ("unet", "vae_decoder", "vae_encoder"),
             "int8-winograd": ("text_encoder", "unet", "vae_decoder", "vae_encoder")}
WINOGRAD_INT8_RULES = (Rule(64, 4, "int16"), Rule(32, 2, "int8", 64 * 2**20))  # F(4x4) amplifies int8 rounding;
# the cap keeps each per-call dequantized weight under 64 MB (-0.1 GB peak RSS at 512 px, measured)
CONV_INT8 = ("MatMul", "Gemm", "Conv")
EXACT = ("fp32", "winograd")  # fp32 maths: held to the fp32 tolerances against PyTorch
# reduced precisions whose verification image is gated (PSNR vs diffusers' fp32 image, dB); the others are reported.
# int8-ov: 25 dB = the same picture with int8 noise (the tiny export measures 39.4 dB: max 14/255, mean 1.9/255).
MIN_PSNR = {"int8-ov": 25.0}


def reference_shapes(path: Path, side: int, vae_scale: int) -> dict[str, list[int]]:
    """A component's input shapes for one image of ``side`` px (its dynamic axes as named in DYNAMIC_AXES)."""
    import onnx

    size = {"batch": 1, "height": side // vae_scale, "width": side // vae_scale, "H": side, "W": side}
    model = onnx.load(str(path), load_external_data=False)
    return {i.name: [d.dim_value if d.HasField("dim_value") else size[d.dim_param] for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input}


def shared_component(precision: str, name: str, tables: dict[str, dict[str, str]]) -> str | None:
    """The file another precision already wrote that ``precision`` uses as is for ``name`` (int8-winograd's
    decoders and VAE encoder are winograd's fp32 ones), or None."""
    if precision == "int8-winograd" and name not in ("unet", "text_encoder"):
        rel = tables.get("winograd", {}).get(name, "")
        return rel if rel.startswith("winograd/") else None
    return None


def make_precision(precision: str, name: str, src: Path, dst: Path, *, winograd_side: int = 512, vae_scale: int = 8,
                   calibration: Callable[[], list] | None = None) -> Path:
    """Write component ``name`` in ``precision`` from its fp32 file ``src`` (see QUANTIZED and the Winograd rules);
    returns the file written (``dst``, or its .xml IR for int8-ov)."""
    from export import quantize as q
    from export import winograd as wg

    if precision == "int8":
        return q.dynamic_int8(src, dst)
    if precision == "int8-winograd" and name == "text_encoder":  # the 49408 x 768 token embedding too: -114 MB
        return q.dynamic_int8(src, dst, op_types=("MatMul", "Gemm", "Gather"))
    if precision == "int8-conv":
        return q.dynamic_int8(src, dst, op_types=CONV_INT8)
    if precision == "fp16":
        return q.fp16(src, dst)
    if precision == "qdq":
        if calibration is None:
            raise ValueError("qdq needs calibration feeds")
        return q.static_qdq(src, dst, q.FeedsReader(calibration()))
    if precision == "int8-ov":
        if calibration is None:
            raise ValueError("int8-ov needs calibration feeds")
        return q.nncf_int8(src, dst.with_suffix(".xml"), calibration())
    if precision not in ("winograd", "int8-winograd"):
        raise ValueError(f"unknown precision {precision!r}")
    shapes = reference_shapes(src, winograd_side, vae_scale)
    if name != "unet" or precision == "winograd":  # fp32 weights
        wg.winograd_file(src, dst, shapes)
        return dst
    # int8-winograd UNet: Winograd on int16 / int8 transformed weights, then int8-conv on everything else
    staged = dst.with_name(f"{dst.stem}.winograd.onnx")
    done = wg.winograd_file(src, staged, shapes, WINOGRAD_INT8_RULES)
    q.dynamic_int8(staged, dst, op_types=CONV_INT8, nodes_to_exclude=[n for r in done for n in r.new_nodes])
    for f in (staged, staged.with_name(staged.name + ".data")):
        f.unlink(missing_ok=True)
    return dst
