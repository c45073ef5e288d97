"""How far a graph is from this machine's arithmetic limit: multiply-accumulates (MACs) of an ONNX graph's
matrix products, and the best fp32 matrix-product rate onnxruntime reaches here, so a bench can print
"at least N ms even if every product ran at the best GEMM rate and nothing else cost anything".

    python bench/roofline.py model.onnx [--input name=1,3,1024,1024 ...] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PRODUCT_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "FusedMatMul")


def onnx_macs(path: str | Path, input_shapes: dict[str, list[int]] | None = None) -> dict[str, int]:
    """MACs per run of the graph's MatMul / Gemm / Conv / ConvTranspose nodes, by op type, with the graph
    inputs fixed to ``input_shapes`` (other dynamic inputs must already be static). Weights stay on disk
    (external data is not loaded); nodes whose shapes cannot be inferred are counted under "unknown"."""
    import onnx

    from export.onnx_shapes import static_shapes

    # 1. the graph with static inputs, shapes inferred (weights stay on disk)
    model = onnx.load(str(path), load_external_data=False)
    shapes = static_shapes(model, input_shapes, base_dir=Path(path).parent)
    # 2. MACs of each product node
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in PRODUCT_OPS:
            continue
        a, w, y = (shapes.get(n) for n in (node.input[0], node.input[1], node.output[0]))
        if a is None or w is None or y is None:
            out["unknown"] = out.get("unknown", 0) + 1
            continue
        attrs = {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}
        if node.op_type in ("MatMul", "FusedMatMul"):
            macs = math.prod(y) * a[-1]
        elif node.op_type == "Gemm":
            macs = math.prod(y) * (a[0] if attrs.get("transA") else a[-1])
        elif node.op_type == "Conv":
            macs = math.prod(y) * math.prod(w[1:])                 # each output: C_in/group * kh * kw
        else:                                                       # ConvTranspose: each input scatters
            macs = math.prod(a) * math.prod(w[1:])                  # C_out/group * kh * kw products
        out[node.op_type] = out.get(node.op_type, 0) + int(macs)
    return out


def total_macs(path: str | Path, input_shapes: dict[str, list[int]] | None = None) -> int:
    """All product MACs of the graph (see :func:`onnx_macs`)."""
    return sum(v for k, v in onnx_macs(path, input_shapes).items() if k != "unknown")


def gemm_rate(threads: int, n: int = 2048, repeat: int = 5) -> float:
    """The best fp32 matrix-product rate onnxruntime reaches here (MACs per second): one n x n x n
    MatMul with a constant right operand (prepacked, as model weights are), ``threads`` intra-op threads."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "b")
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], initializer=[b])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                so, providers=["CPUExecutionProvider"])
    a = rng.standard_normal((n, n)).astype(np.float32)
    sess.run(None, {"a": a})
    best = min(_timed(lambda: sess.run(None, {"a": a})) for _ in range(repeat))
    return n ** 3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def floor_line(label: str, macs: int, rate: float, measured_s: float | None = None) -> str:
    """One line: MACs, the time they need at ``rate``, and (if given) how close a measured time is."""
    floor = macs / rate
    s = f"{label}: {macs / 1e9:.2f} GMAC of matrix products -> >= {floor * 1e3:.0f} ms at the best GEMM rate"
    if measured_s is not None:
        s += f"; measured {measured_s * 1e3:.0f} ms = {floor / measured_s:.0%} of that rate overall"
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--input", action="append", default=[], metavar="NAME=D0,D1,...",
                    help="fix a dynamic graph input's shape (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    shapes = {}
    for spec in args.input:
        name, _, dims = spec.partition("=")
        shapes[name] = [int(d) for d in dims.split(",")]
    macs = onnx_macs(args.model, shapes)
    rate = gemm_rate(args.threads)
    print(f"best fp32 GEMM rate here (onnxruntime, {args.threads} threads): {rate / 1e9:.1f} GMAC/s")
    print("MACs by op:", {k: (f"{v / 1e9:.3f} G" if k != "unknown" else v) for k, v in macs.items()})
    print(floor_line(Path(args.model).name, total_macs(args.model, shapes), rate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
