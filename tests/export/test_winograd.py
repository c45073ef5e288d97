"""export/winograd.py: the F(m x m, 3 x 3) rewrite computes what onnxruntime's own Conv computes, at any batch and
spatial size (the reference size only chooses which convolutions are rewritten), leaves the convolutions it
cannot take alone, and cuts the products a graph executes."""

from __future__ import annotations

import numpy as np
import pytest

from export import winograd as wg


def _graph(convs: list[dict], c_in: int = 8):
    """x [N, c_in, H, W] -> a chain of Convs (each dict: out, k, stride, pads, bias) -> y."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev, c = [], [], "x", c_in
    for i, spec in enumerate(convs):
        k = spec.get("k", 3)
        w = (rng.standard_normal((spec["out"], c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        ins = [prev, f"w{i}"]
        if spec.get("bias", True):
            inits.append(numpy_helper.from_array(rng.standard_normal(spec["out"]).astype(np.float32), f"b{i}"))
            ins.append(f"b{i}")
        pad = spec.get("pads", k // 2)
        nodes.append(helper.make_node("Conv", ins, [f"y{i}"], name=f"conv{i}", kernel_shape=[k, k],
                                      strides=[spec.get("stride", 1)] * 2, pads=[pad] * 4))
        prev, c = f"y{i}", spec["out"]
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c_in, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("m", [2, 4])
def test_transforms_compute_a_1d_correlation(m):
    """A^T [(G g) * (B^T d)] is the valid correlation of d (m + 2 samples) with g (3 taps): the identity the
    whole rewrite rests on."""
    bt, g, at = wg.transform_matrices(m)
    rng = np.random.default_rng(m)
    d, taps = rng.standard_normal(m + 2), rng.standard_normal(3)
    np.testing.assert_allclose(at @ ((g @ taps) * (bt @ d)), np.correlate(d, taps, mode="valid"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rules,tol", [(wg.FP32_RULES, 1e-5), ((wg.Rule(16, 2),), 1e-5),
                                       ((wg.Rule(16, 4, "int16"),), 1e-3), ((wg.Rule(16, 2, "int8"),), 5e-2)])
def test_rewrite_matches_conv_at_any_size(rules, tol):
    """Three eligible 3x3 convolutions (with and without bias, channel counts changing) between a 1x1 and a
    stride-2 convolution (left alone); rewritten at a 32 x 32 reference, run at other batches and odd sizes."""
    model = _graph([{"out": 16}, {"out": 8, "k": 1}, {"out": 12, "bias": False}, {"out": 8}, {"out": 8, "stride": 2}])
    ref_model = model.__class__()
    ref_model.CopyFrom(model)
    done = wg.rewrite(model, {"x": [1, 8, 32, 32]}, rules)
    assert [r.node for r in done] == ["conv0", "conv2", "conv3"]
    assert {r.m for r in done} == {rules[0].m} and all(r.side == (32, 32) for r in done)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 2 + 3 * len(done)  # 1x1 and stride-2 kept; per rewrite 2 input + 1 output transforms
    assert not {"w0", "w2", "w3"} & {t.name for t in model.graph.initializer}  # the 3x3 weights are gone
    rng = np.random.default_rng(1)
    for shape in ([1, 8, 32, 32], [2, 8, 19, 27], [1, 8, 5, 7]):
        x = rng.standard_normal(shape).astype(np.float32)
        ref, out = _run(ref_model, x), _run(model, x)
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() <= tol * np.abs(ref).max(), (shape, np.abs(out - ref).max())


def test_rules_choose_by_reference_size_and_weight_bytes():
    """Small activations are kept (their products are bound by weight reads), F(4x4) where its 4x weights
    fit the byte cap, else F(2x2)."""
    assert wg.choose(wg.FP32_RULES, 320, 320, (64, 64)).m == 4
    assert wg.choose(wg.FP32_RULES, 1280, 1280, (16, 16)).m == 2  # F(4x4) U would be 236 MB
    assert wg.choose(wg.FP32_RULES, 1280, 1280, (8, 8)) is None
    assert wg.choose(wg.FP32_RULES, 2560, 1280, (16, 16)) is None  # even F(2x2) over the cap


def test_fewer_products_executed(tmp_path):
    """The roofline's MAC count of the rewritten graph (what onnxruntime multiplies) is about 4x smaller for
    F(4x4) on wide convolutions."""
    import onnx

    from bench.roofline import total_macs

    model = _graph([{"out": 64}, {"out": 64}], c_in=64)
    onnx.save(model, tmp_path / "direct.onnx")
    wg.rewrite(model, {"x": [1, 64, 64, 64]})
    onnx.save(model, tmp_path / "winograd.onnx")
    shapes = {"x": [1, 64, 64, 64]}
    direct, fast = total_macs(tmp_path / "direct.onnx", shapes), total_macs(tmp_path / "winograd.onnx", shapes)
    assert direct == 2 * 64 * 64 * 64 * 64 * 9
    assert 2.5 < direct / fast < 4.0  # 4x fewer in the products, the transforms cost a little
