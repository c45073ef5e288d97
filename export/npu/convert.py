"""The generic fp32 -> NPU-ready graph pipeline every family converter uses:

  1. (optional) prune to the outputs the NPU graph should produce
  2. rewrites: exact GELU -> one Gelu node (HTP-native) or its tanh approximation; lone Erf -> tanh; ConvTranspose k2s2 -> Conv + DepthToSpace
  3. static shapes (named dims fixed; ``keep`` dims stay symbolic and are fixed per session)
  4. fold constants, clamp -3.4e38 attention masks to -100, collapse shape arithmetic on known dims, drop no-op Tile/Expand/Reshape — repeated
     until nothing changes
  5. QDQ quantization per scheme (export.npu.quant)
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from export.npu import graph as G
from export.quantize import save_onnx


@dataclass
class Prepared:
    """A static fp32 graph ready for calibration, and what was done to it."""

    path: Path
    rewrites: dict = field(default_factory=dict)
    ops_before: dict = field(default_factory=dict)
    ops_after: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)


GELU_MODES = ("native", "tanh")


def prepare(src: str | Path, dst: str | Path, *, dims: dict[str, int] | None = None,
            shapes: dict[str, list[int]] | None = None, outputs: list[str] | None = None,
            keep_symbolic: tuple[str, ...] = (), gelu: str = "native") -> Prepared:
    """``src`` (fp32 ONNX as exported) -> ``dst`` (fp32, rewritten, static except ``keep_symbolic``).

    ``gelu``: ``native`` fuses exact GELU (x*0.5*(1+erf(x/sqrt2))) into one ``Gelu`` node, which QNN HTP
    runs natively (onnxruntime's QNN preprocessing); ``tanh`` writes it as the tanh approximation
    instead (for NPUs without a GELU). Any Erf left over becomes tanh either way (HTP has no Erf)."""
    if gelu not in GELU_MODES:
        raise ValueError(f"gelu must be one of {GELU_MODES}, got {gelu!r}")
    import onnx

    src, dst = Path(src), Path(dst)
    scratch = Path(tempfile.mkdtemp(prefix=".npu-prepare-", dir=dst.parent))
    try:
        # 1. prune
        cur = src
        if outputs:
            cur = G.prune(src, scratch / "pruned.onnx", outputs)
        before = G.op_counts(onnx.load(str(cur)))
        # 2. rewrites
        n_native = 0
        if gelu == "native":
            if G.qnn_preprocess(cur, scratch / "fused.onnx"):
                cur = scratch / "fused.onnx"
                n_native = G.op_counts(onnx.load(str(cur))).get("Gelu", 0)
        model = onnx.load(str(cur))
        model, n_gelu = G.gelu_erf_to_sigmoid(model) if gelu == "tanh" else (model, 0)
        model, n_erf = G.erf_to_tanh(model)
        model, n_ct = G.convtranspose_to_d2s(model)
        # 3. static shapes
        G.fix_dims(model, dims, shapes)
        model, n_split = G.slices_to_split(model)
        left = {k: v for k, v in G.symbolic_inputs(model).items()
                if any(isinstance(d, str) and d not in keep_symbolic for d in v)}
        if left:
            raise ValueError(f"inputs still have symbolic dimensions after fixing: {left}")
        save_onnx(model, scratch / "rw.onnx")
        del model
        # 4. fold / simplify until stable (static shapes make more chunk-Slices recognisable afterwards)
        G.fold(scratch / "rw.onnx", scratch / "f.onnx")
        model = onnx.load(str(scratch / "f.onnx"))
        model, n_split2 = G.slices_to_split(model)
        model, n_mask = G.clamp_masks(model)
        save_onnx(model, scratch / "f.onnx")
        n_known = n_noop = 0
        for _ in range(6):
            model = onnx.load(str(scratch / "f.onnx"))
            model, k = G.fold_known_dims(model)
            model, r = G.remove_noops(model)
            n_known, n_noop = n_known + k, n_noop + r
            if k == 0 and r == 0:
                break
            save_onnx(model, scratch / "k.onnx")
            del model  # one copy of the weights at a time (the SD1.5 UNet's are 3.4 GB; its session holds more)
            G.fold(scratch / "k.onnx", scratch / "f.onnx")
        model = None
        # value_info for every tensor (the calibrator only sees tensors whose type onnx's own inference
        # reaches, and it stops at contrib ops such as com.microsoft Gelu)
        final = G._infer(onnx.load(str(scratch / "f.onnx")))  # noqa: SLF001
        del final.metadata_props[:]   # onnxruntime's qnn_preprocess_model fails on models that carry any
        save_onnx(final, dst)
        return Prepared(dst, {"gelu_fused_native": n_native, "gelu_erf_to_sigmoid": n_gelu, "erf_to_tanh": n_erf, "convtranspose_to_depth_to_space": n_ct,
                              "slices_to_split": n_split + n_split2, "masks_clamped": n_mask,
                              "shape_ops_folded": n_known, "noops_removed": n_noop,
                              "outputs_pruned_to": outputs or []},
                        before, G.op_counts(final), G.input_shapes(final))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
