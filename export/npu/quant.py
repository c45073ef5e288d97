"""Static QDQ quantization for the QNN HTP NPU, over ``onnxruntime.quantization`` and its QNN
configuration helpers (``get_qnn_qdq_config``, ``qnn_preprocess_model``) — no quantizer of our own.

Schemes (activations / weights):
  a8w8    uint8 / uint8   smallest and fastest on the HTP; least accurate
  a16w8   uint16 / uint8  the usual HTP choice for transformers and diffusion models
  fp16    (FLOAT_SCHEMES) no QDQ: the float graph, which the HTP computes in fp16 (QNN's
          enable_htp_fp16_precision; HTP v69 and later)
Calibration: MinMax over representative feeds the family converters record from the fp32 model
on real inputs (images, prompts, text).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

SCHEMES = {"a8w8": ("QUInt8", "QUInt8"), "a16w8": ("QUInt16", "QUInt8")}
FLOAT_SCHEMES = {"fp16": {"enable_htp_fp16_precision": "1"}}
"""Schemes that keep the float graph, with the QNN provider options that run it in that precision."""


class FeedsReader:
    """A CalibrationDataReader over a list of feed dicts (name -> array)."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]):
        self.feeds = list(feeds)
        self._it = iter(self.feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)


def quantize_qdq(src: str | Path, dst: str | Path, feeds: list[dict[str, np.ndarray]], scheme: str,
                 *, nodes_to_exclude: list[str] | None = None) -> Path:
    """``src`` (fp32, static shapes) -> ``dst`` (QDQ) calibrated on ``feeds`` with ``scheme``."""
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    from export.npu import graph as G

    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    if not feeds:
        raise ValueError("calibration needs at least one feed")
    src, dst = Path(src), Path(dst)
    act, weight = SCHEMES[scheme]
    pre = dst.with_name(dst.stem + ".qnnpre.onnx")
    op21: Path | None = None
    try:
        import onnx

        from export.quantize import is_large, save_onnx, static_qdq_streamed

        if onnx.load(str(src), load_external_data=False).metadata_props:  # qnn_preprocess_model fails on them
            model = onnx.load(str(src))
            del model.metadata_props[:]
            src = save_onnx(model, pre)
        if "16" in act or "16" in weight:
            src = op21 = _at_opset21(src)
        if G.qnn_preprocess(src, pre, fuse_layernorm=True):
            src = pre
        # (a model over 2 GB: the config sees its external data and has the quantizer write <dst>.data)
        cfg = get_qnn_qdq_config(str(src), FeedsReader(feeds), calibrate_method=CalibrationMethod.MinMax,
                                 activation_type=getattr(QuantType, act), weight_type=getattr(QuantType, weight),
                                 per_channel=False, nodes_to_exclude=nodes_to_exclude)
        if is_large(src):  # quantize() holds the weights three times over (the SD1.5 UNet: OOM at 24 GB)
            static_qdq_streamed(src, dst, cfg.calibration_data_reader, False, cfg.op_types_to_quantize,
                                cfg.activation_type, cfg.weight_type, cfg.calibrate_method,
                                extra_options=cfg.extra_options, nodes_to_exclude=cfg.nodes_to_exclude or ())
        else:
            quantize(str(src), str(dst), cfg)
    finally:
        if op21 is not None and op21.name.endswith(".qnnpre21.onnx"):
            op21.unlink(missing_ok=True)
        pre.unlink(missing_ok=True)
        for junk in dst.parent.glob("*.qnnpre*"):
            junk.unlink(missing_ok=True)
    return dst


def _at_opset21(src: Path) -> Path:
    """``src`` at opset 21, where QuantizeLinear / DequantizeLinear take 16-bit types (``src`` itself when it
    already is). onnxruntime's quantizer would convert the whole model, which a model over 2 GB (the SD1.5
    UNet) cannot be serialized for: here the graph is converted without its weights and saved beside
    ``src``, so its external tensors still resolve."""
    import onnx
    from onnx import version_converter

    graph = onnx.load(str(src), load_external_data=False)
    if next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 21:
        return src
    dst = src.with_name(src.stem + ".qnnpre21.onnx")
    onnx.save(version_converter.convert_version(graph, 21), str(dst))
    return dst
