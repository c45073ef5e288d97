"""Winograd convolution as an ONNX graph rewrite: 3x3 stride-1 convolutions become F(m x m, 3 x 3)
minimal-filtering subgraphs (Lavin & Gray, 2016) that onnxruntime runs with its own kernels.

A direct 3x3 convolution costs 9 multiply-accumulates per output per input channel; F(4x4, 3x3) costs
36 per 16 outputs (2.25 each: 4x fewer), F(2x2, 3x3) 16 per 4 (4 each: 2.25x fewer). onnxruntime's CPU
convolution already runs at its matrix-product rate, so cutting the products is what is left.

The subgraph (dynamic batch and spatial size; odd sizes are padded up and cropped back):

  1. x [N, C, H, W] -> [N*C, 1, H+2+e, W+2+e]          (pad 1, plus e to a multiple of m)
  2. input transform B^T d B: two fixed 1-D convolutions (rows, then columns), stride m -> [N*C*a, a, T1, T2]
  3. -> [a*a, N, C, T1*T2]; MatMul with the transformed weights U = G g G^T [a*a, 1, C_out, C]
  4. output transform A^T M A: a fixed 1x1 convolution a*a -> m*m, DepthToSpace(m), crop to H x W, + bias

(a = m + 2.) U is 4x (m = 4) or 1.8x (m = 2) the size of the 3x3 weights, so only convolutions whose
activations are large enough to pay for it are rewritten: :class:`Rule` s choose by the spatial size each
convolution sees at a reference input shape. U can be stored int16 or int8 (symmetric, one scale per tile
position and output channel) and dequantized per call, which keeps a smaller model's memory; F(4x4)'s
transforms amplify weight rounding (coefficients up to 8), so int8 suits F(2x2) only. (float16 would be
constant-folded back to float32 by onnxruntime at load.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.onnx_shapes import static_shapes

log = logging.getLogger("export.winograd")


def transform_matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T, G, A^T) of F(m x m, 3 x 3) for m in (2, 4): the standard interpolation points 0, +-1 (m = 2)
    and 0, +-1, +-2 (m = 4)."""
    if m == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif m == 4:
        bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
              [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
        g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
             [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError(f"Winograd tile m={m} is not supported; use 2 or 4")
    return np.array(bt, np.float64), np.array(g, np.float64), np.array(at, np.float64)


def transformed_weights(w: np.ndarray, m: int) -> np.ndarray:
    """U = G w G^T for 3x3 weights [C_out, C, 3, 3] -> [a*a, 1, C_out, C] float32 (a = m + 2)."""
    _, g, _ = transform_matrices(m)
    a = m + 2
    u = np.einsum("ik,ockl,jl->ijoc", g, w.astype(np.float64), g)
    return u.reshape(a * a, 1, w.shape[0], w.shape[1]).astype(np.float32)


def quantize_rows(u: np.ndarray, dtype=np.int8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric integer U [a*a, 1, C_out, C] (int8 or int16) with one scale per (tile position, output
    channel): (q [a*a*C_out, C], scale [a*a*C_out] float32)."""
    top = np.iinfo(dtype).max
    rows = u.reshape(-1, u.shape[-1])
    scale = np.maximum(np.abs(rows).max(axis=1), 1e-12) / top
    q = np.clip(np.rint(rows / scale[:, None]), -top, top).astype(dtype)
    return q, scale.astype(np.float32)


@dataclass
class Rewritten:
    """One convolution replaced: its node name, the tile size, channels and the reference spatial size."""
    node: str
    m: int
    c_in: int
    c_out: int
    side: tuple[int, int]
    new_nodes: list[str]


def eligible(node, consts: dict, shapes: dict) -> tuple[int, int, tuple[int, int]] | None:
    """(C_in, C_out, (H, W)) when ``node`` is a 3x3, stride-1, dilation-1, group-1, pad-1 Conv with constant
    weights and a known 4-D input shape; else None."""
    from onnx import helper

    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or node.input[1] not in consts:
        return None
    w = consts[node.input[1]]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if list(w.dims[2:]) != [3, 3] or attrs.get("group", 1) != 1 or attrs.get("auto_pad", b"NOTSET") not in (
            b"NOTSET", "NOTSET"):
        return None
    if list(attrs.get("strides", [1, 1])) != [1, 1] or list(attrs.get("dilations", [1, 1])) != [1, 1]:
        return None
    if list(attrs.get("pads", [0, 0, 0, 0])) != [1, 1, 1, 1]:
        return None
    x = shapes.get(node.input[0])
    if not x or len(x) != 4:
        return None
    return int(w.dims[1]), int(w.dims[0]), (int(x[2]), int(x[3]))


class _Builder:
    """Appends nodes and initializers with names unique to one rewritten convolution."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.inits = prefix, [], []

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        full = f"{self.prefix}/{name}"
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), full))
        return full

    def op(self, op_type: str, inputs: list[str], name: str, domain: str = "", **attrs) -> str:
        from onnx import helper

        out = f"{self.prefix}/{name}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, domain=domain, **attrs))
        return out


def winograd_subgraph(node, weight: np.ndarray, bias: np.ndarray | None, m: int,
                      weights: str = "float32") -> tuple[list, list]:
    """(nodes, initializers) computing ``node`` (a 3x3 pad-1 Conv) by F(m x m, 3 x 3); its output name is kept."""
    from onnx import helper

    bt, _, at = transform_matrices(m)
    a = m + 2
    c_out, c_in = weight.shape[:2]
    b = _Builder(node.name or node.output[0])
    x = node.input[0]
    i64 = lambda v: np.array(v, np.int64)  # noqa: E731
    # 1. shapes: H, W, the tile counts T = ceil(H / m), the pad e = m T - H (ops shape inference can follow)
    hw = b.op("Slice", [b.op("Shape", [x], "shape"), b.const("two", i64([2])), b.const("four", i64([4]))], "hw")
    tiles = b.op("Div", [b.op("Add", [hw, b.const("m_minus_1", i64([m - 1]))], "hw_up"), b.const("m", i64([m]))],
                 "tiles")
    extra = b.op("Sub", [b.op("Mul", [tiles, b.const("m_mul", i64([m]))], "hw_padded"), hw], "extra")
    pads = b.op("Concat", [b.const("pads_head", i64([0, 0, 1, 1, 0, 0])),
                           b.op("Add", [extra, b.const("one", i64([1]))], "pad_tail")], "pads", axis=0)
    # 2. input transform: each channel an image; B^T along rows, then along columns, stride m
    x1 = b.op("Reshape", [x, b.const("as_images", i64([-1, 1, 0, 0]))], "x_images")
    xp = b.op("Pad", [x1, pads], "x_padded")
    rows = b.op("Conv", [xp, b.const("bt_rows", bt.reshape(a, 1, a, 1).astype(np.float32))], "bt_rows_out",
                kernel_shape=[a, 1], strides=[m, 1])
    rows = b.op("Reshape", [rows, b.const("as_rows", i64([-1, 1, 0, 0]))], "rows_images")
    v = b.op("Conv", [rows, b.const("bt_cols", bt.reshape(a, 1, 1, a).astype(np.float32))], "bt_cols_out",
             kernel_shape=[1, a], strides=[1, m])
    n_tiles = b.op("Mul", [b.op("Slice", [tiles, b.const("zero", i64([0])), b.const("one_end", i64([1]))], "t1"),
                           b.op("Slice", [tiles, b.const("one_start", i64([1])), b.const("two_end", i64([2]))], "t2")],
                   "n_tiles")
    v_shape = b.op("Concat", [b.const("v_head", i64([-1, c_in, a * a])), n_tiles], "v_shape", axis=0)
    v = b.op("Transpose", [b.op("Reshape", [v, v_shape], "v_nck")], "v_kn", perm=[2, 0, 1, 3])
    # 3. the products: per tile position k, U_k [C_out, C] @ V_k [C, tiles]
    u = transformed_weights(weight, m)
    if weights in ("int8", "int16"):  # dequantized per call (onnxruntime does not constant-fold DequantizeLinear)
        q, scale = quantize_rows(u, np.int8 if weights == "int8" else np.int16)
        domain = "" if weights == "int8" else "com.microsoft"  # int16 needs opset 21 or the contrib op
        u_in = b.op("DequantizeLinear", [b.const(f"u_{weights}", q), b.const("u_scale", scale)], "u_dq", axis=0,
                    domain=domain)
        u_in = b.op("Reshape", [u_in, b.const("u_shape", i64(list(u.shape)))], "u")
    elif weights == "float32":
        u_in = b.const("u", u)
    else:
        raise ValueError(f"Winograd weights {weights!r}: use float32, int16 or int8")
    mm = b.op("MatMul", [u_in, v], "products")
    mm = b.op("Transpose", [mm], "products_nok", perm=[1, 2, 0, 3])
    mm = b.op("Reshape", [mm, b.op("Concat", [b.const("m_head", i64([-1, a * a])), tiles], "m_shape", axis=0)],
              "products_images")
    # 4. output transform A^T M A as a 1x1 conv, tiles back to pixels, crop, bias
    at2 = np.einsum("pi,qj->pqij", at, at).reshape(m * m, a * a, 1, 1).astype(np.float32)
    y = b.op("DepthToSpace", [b.op("Conv", [mm, b.const("at", at2)], "at_out", kernel_shape=[1, 1])],
             "pixels", blocksize=m, mode="DCR")
    y = b.op("Reshape", [y, b.const("as_nchw", i64([-1, c_out, 0, 0]))], "y_padded")
    y = b.op("Slice", [y, b.const("zeros", i64([0, 0])), hw, b.const("hw_axes", i64([2, 3]))], "y_cropped")
    if bias is not None:
        b.nodes.append(helper.make_node("Add", [y, b.const("bias", bias.reshape(1, -1, 1, 1).astype(np.float32))],
                                        list(node.output), name=f"{b.prefix}/bias_add"))
    else:
        b.nodes.append(helper.make_node("Identity", [y], list(node.output), name=f"{b.prefix}/out"))
    return b.nodes, b.inits


@dataclass(frozen=True)
class Rule:
    """Rewrite a convolution that sees at least ``min_side`` px a side at the reference input by F(m x m),
    its transformed weights stored as ``weights``, when they stay under ``max_bytes`` (fp32 U size)."""
    min_side: int
    m: int
    weights: str = "float32"
    max_bytes: int = 128 * 2**20


# fp32: F(4x4) wherever activations are large; F(2x2) where F(4x4)'s 4x weights would be too many bytes.
# At 8 px a side and below a batch-1 convolution is bound by reading its weights: kept.
FP32_RULES = (Rule(16, 4), Rule(16, 2))


def choose(rules: tuple[Rule, ...], c_in: int, c_out: int, side: tuple[int, int]) -> Rule | None:
    """The first rule that applies to a convolution of ``side`` at the reference input, or None to keep it."""
    for r in rules:
        if min(side) >= r.min_side and (r.m + 2) ** 2 * c_in * c_out * 4 <= r.max_bytes:
            return r
    return None


def rewrite(model, input_shapes: dict[str, list[int]], rules: tuple[Rule, ...] = FP32_RULES,
            base_dir: str | Path | None = None) -> list[Rewritten]:
    """Replace, in place, every eligible 3x3 convolution of ``model`` (see :func:`eligible`) that a rule picks
    at ``input_shapes`` by its Winograd subgraph; returns what was replaced. ``base_dir``: where a model
    loaded without its external data keeps it (each rewritten weight is read from there, one at a time)."""
    from onnx import numpy_helper

    def array(name: str) -> np.ndarray:
        if base_dir is None:
            return numpy_helper.to_array(consts[name])
        import onnx

        t = onnx.TensorProto()
        t.CopyFrom(consts[name])  # to_array loads external data into the proto it is given: not the model's
        return numpy_helper.to_array(t, str(base_dir))

    # 1. reference shapes and the constant weights
    shapes = static_shapes(model, input_shapes, base_dir)
    consts = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    # 2. rewrite node by node (the graph's order stays topological: the subgraph sits where the Conv was)
    done: list[Rewritten] = []
    new_nodes, dropped = [], set()
    for node in model.graph.node:
        found = eligible(node, consts, shapes)
        rule = choose(rules, *found) if found else None
        if rule is None:
            new_nodes.append(node)
            continue
        w = array(node.input[1])
        bias = array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        nodes, inits = winograd_subgraph(node, w, bias, rule.m, weights=rule.weights)
        new_nodes.extend(nodes)
        model.graph.initializer.extend(inits)
        for name in node.input[1:]:
            uses[name] -= 1
            if name and uses[name] == 0:
                dropped.add(name)
        done.append(Rewritten(node.name or node.output[0], rule.m, found[0], found[1], found[2],
                              [n.name for n in nodes]))
    if any(r.weights == "int16" for r in rules) and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.add(domain="com.microsoft", version=1)
    # 3. the new node list; weights no other node reads are dropped
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    inits = model.graph.initializer
    for i in reversed([i for i, t in enumerate(inits) if t.name in dropped]):  # in place: no copy of GBs
        del inits[i]
    log.info("winograd: %d convolutions rewritten (%s)", len(done),
             ", ".join(f"F({r.m}) {r.c_in}->{r.c_out} @{r.side[0]}x{r.side[1]}" for r in done[:6]))
    return done


def winograd_file(src: str | Path, dst: str | Path, input_shapes: dict[str, list[int]],
                  rules: tuple[Rule, ...] = FP32_RULES) -> list[Rewritten]:
    """:func:`rewrite` from one ONNX file to another (external data when over ~2 GB). A model stored with
    external data is never loaded whole: the convolutions' weights are read one at a time and the other
    tensors are streamed file to file (export.quantize.save_streamed)."""
    import onnx

    from export.quantize import is_large, save_onnx, save_streamed

    src = Path(src)
    if not is_large(src):
        model = onnx.load(str(src), load_external_data=True)
        done = rewrite(model, input_shapes, rules)
        save_onnx(model, dst)
        return done
    model = onnx.load(str(src), load_external_data=False)
    done = rewrite(model, input_shapes, rules, base_dir=src.parent)
    save_streamed(model, dst, src.parent)
    return done
