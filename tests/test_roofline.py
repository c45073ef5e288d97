"""bench/roofline.py counts the multiply-accumulates the benches quote as each graph's arithmetic floor."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

onnx = pytest.importorskip("onnx")


def _graph(path: Path) -> None:
    """x (batch, 3, 16, 16) -> Conv 3->8 k3 pad1 -> ConvTranspose 8->4 k2 s2 -> Reshape -> MatMul with
    (32 x 5) -- the batch axis dynamic, so the counter must fix it from the given input shape."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (8, 3, 3, 3)), ("w2", (8, 4, 2, 2)), ("w3", (32, 5)))]
    inits.append(numpy_helper.from_array(np.array([0, 4 * 32, 32], np.int64), "shape"))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["c", "w2"], ["t"], strides=[2, 2]),
             helper.make_node("Reshape", ["t", "shape"], ["r"]),
             helper.make_node("MatMul", ["r", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_macs_of_each_product_op_match_the_hand_count(tmp_path):
    from bench.roofline import onnx_macs

    _graph(tmp_path / "g.onnx")
    macs = onnx_macs(tmp_path / "g.onnx", {"x": [2, 3, 16, 16]})
    assert macs == {"Conv": 2 * 8 * 16 * 16 * (3 * 3 * 3),          # each output: C_in * kh * kw
                    "ConvTranspose": 2 * 8 * 16 * 16 * (4 * 2 * 2),  # each input: C_out * kh * kw
                    "MatMul": 2 * 128 * 5 * 32}


def test_the_gemm_rate_is_a_plausible_cpu_rate():
    from bench.roofline import gemm_rate

    rate = gemm_rate(threads=1, n=256, repeat=3)
    assert 1e8 < rate < 1e12     # MACs/s: between a slow embedded core and far beyond any 2-core CPU
