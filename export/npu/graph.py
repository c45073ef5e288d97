"""ONNX graph rewrites that make exported models runnable on an NPU (Qualcomm QNN HTP first).

Each function takes and returns an ``onnx.ModelProto`` (or paths) and states what it changes:

- :func:`erf_to_tanh`             exact GELU's ``Erf`` -> the tanh approximation (HTP has no Erf)
- :func:`convtranspose_to_d2s`    ConvTranspose k=2 s=2 -> 1x1 Conv to 4x channels + DepthToSpace (CRD);
                                  exactly the same function, and HTP runs it
- :func:`fix_dims`                symbolic dimensions / input shapes -> fixed numbers (static shapes)
- :func:`prune`                   keep only some outputs (and drop inputs nothing uses any more), e.g. to
                                  move shape-dependent resizing out of the graph
- :func:`fold`                    onnxruntime's basic offline optimisation: constant folding, which turns
                                  Shape/Gather/Concat chains into constants once shapes are static
- :func:`op_counts`               node count per op type (for reports)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from export.quantize import is_large, needs_external_data, save_onnx

# erf(z) ~= tanh(a*z + b*z^3): the tanh form of GELU, 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))),
# written for erf's argument z = x / sqrt(2).
ERF_A = 2.0 / math.sqrt(math.pi)
ERF_B = ERF_A * 0.044715 * 2.0


class _Arrays(Mapping):
    """Tensor values by name, each converted to numpy when first read: a graph's weights are GBs (the SD1.5
    UNet's 3.4), and the passes read a few small ones (shape constants, repeats, masks)."""

    def __init__(self, tensors: dict):
        self._tensors, self._values = tensors, {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._values:
            from onnx import numpy_helper

            self._values[name] = numpy_helper.to_array(self._tensors[name])
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def _initializers(graph) -> _Arrays:
    """Values of the graph's initializers, by tensor name (read lazily)."""
    return _Arrays({i.name: i for i in graph.initializer})


def _constants(graph) -> _Arrays:
    """Values of initializers and ``Constant`` node outputs, by tensor name (read lazily)."""
    from onnx import helper

    tensors = {i.name: i for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    tensors[n.output[0]] = helper.get_attribute_value(a)
    return _Arrays(tensors)


class _Names:
    """Fresh names for new tensors and nodes in a graph."""

    def __init__(self, graph):
        self.used = {n.name for n in graph.node} | {o for n in graph.node for o in n.output}
        self.used |= {i.name for i in graph.initializer} | {i.name for i in graph.input}
        self.used |= {o.name for o in graph.output}

    def __call__(self, base: str) -> str:
        name, i = base, 0
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name


def _const(graph, names: _Names, base: str, value: np.ndarray) -> str:
    from onnx import numpy_helper

    name = names(base)
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def erf_to_tanh(model):
    """Replace every ``Erf(z)`` by ``Tanh(z * (a + b*z*z))`` (the tanh approximation of GELU). Returns
    (model, number replaced). Max |erf - approx| is about 5e-4 (measured in the tests)."""
    from onnx import helper

    g = model.graph
    names = _Names(g)
    out_nodes, n = [], 0
    a = b = None
    for node in g.node:
        if node.op_type != "Erf" or node.domain not in ("", "ai.onnx"):
            out_nodes.append(node)
            continue
        if a is None:
            a = _const(g, names, "erf_tanh_a", np.array(ERF_A, np.float32))
            b = _const(g, names, "erf_tanh_b", np.array(ERF_B, np.float32))
        z, y, base = node.input[0], node.output[0], node.name or "erf"
        z2, bz2, poly, arg = (names(f"{base}/tanh_{s}") for s in ("z2", "bz2", "poly", "arg"))
        out_nodes += [
            helper.make_node("Mul", [z, z], [z2], name=names(f"{base}/tanh_sq")),
            helper.make_node("Mul", [z2, b], [bz2], name=names(f"{base}/tanh_b")),
            helper.make_node("Add", [bz2, a], [poly], name=names(f"{base}/tanh_a")),
            helper.make_node("Mul", [z, poly], [arg], name=names(f"{base}/tanh_arg")),
            helper.make_node("Tanh", [arg], [y], name=names(f"{base}/tanh")),
        ]
        n += 1
    del g.node[:]
    g.node.extend(out_nodes)
    return model, n


def gelu_erf_to_sigmoid(model):
    """``Add(Erf(z), 1)`` (the heart of exact GELU, x*0.5*(1+erf(x/sqrt2))) -> ``2*Sigmoid(2*(a*z + b*z^3))``,
    the tanh GELU approximation written with a sigmoid (1 + tanh(u) = 2*sigmoid(2u)). Used by
    ``--gelu tanh`` (NPUs without a native GELU); measured here on the QNN HTP simulator with 16-bit
    activations: ``x * (1 + tanh(.))`` inside diffusers' GEGLU diverged from onnxruntime's CPU QDQ
    result, the sigmoid form did not. Returns (model, number replaced)."""
    from onnx import helper, numpy_helper

    g = model.graph
    names = _Names(g)
    inits = _constants(g)
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    replace: dict[int, list] = {}
    drop: set[int] = set()
    a = b = two = None
    for node in g.node:
        if node.op_type != "Erf":
            continue
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add":
            continue
        add = users[0]
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if other not in inits or inits[other].size != 1 or float(inits[other].ravel()[0]) != 1.0:
            continue
        if a is None:
            a = _const(g, names, "gelu_sigmoid_a", np.array(2 * ERF_A, np.float32))
            b = _const(g, names, "gelu_sigmoid_b", np.array(2 * ERF_B, np.float32))
            two = _const(g, names, "gelu_sigmoid_two", np.array(2.0, np.float32))
        z, y, base = node.input[0], add.output[0], node.name or "erf"
        z2, bz2, poly, arg, sig = (names(f"{base}/sig_{s}") for s in ("z2", "bz2", "poly", "arg", "sig"))
        replace[id(node)] = [
            helper.make_node("Mul", [z, z], [z2], name=names(f"{base}/sig_sq")),
            helper.make_node("Mul", [z2, b], [bz2], name=names(f"{base}/sig_b")),
            helper.make_node("Add", [bz2, a], [poly], name=names(f"{base}/sig_a")),
            helper.make_node("Mul", [z, poly], [arg], name=names(f"{base}/sig_arg")),
            helper.make_node("Sigmoid", [arg], [sig], name=names(f"{base}/sigmoid")),
            helper.make_node("Mul", [sig, two], [y], name=names(f"{base}/sig_two")),
        ]
        drop.add(id(add))
    out = []
    for n in g.node:
        if id(n) in replace:
            out += replace[id(n)]
        elif id(n) not in drop:
            out.append(n)
    del g.node[:]
    g.node.extend(out)
    _drop_unused_initializers(model)
    return model, len(replace)


def clamp_masks(model, floor: float = -100.0, below: float = -1e4):
    """Additive attention masks built from ``finfo.min`` (-3.4e38, e.g. CLIP's causal mask) or a huge
    negative bias picked by ``Where`` (-1e9, the chat decoder's padding mask) -> ``floor``.
    A static-range quantizer gives the masked ``scores + mask`` tensor a range of ~3.4e38, which leaves no
    resolution for the real scores (measured: 0.13 relative error on CLIP's output with 16-bit
    activations). exp(-100) is 0 in float32, so softmax is unchanged. Returns (model, tensors clamped)."""
    from onnx import numpy_helper

    g = model.graph
    adds = {i for n in g.node if n.op_type in ("Add", "Where") for i in n.input}
    n = 0
    for k, init in enumerate(list(g.initializer)):
        if init.name not in adds or init.data_type != 1:
            continue
        a = numpy_helper.to_array(init)
        if float(a.min()) < below:
            g.initializer[k].CopyFrom(numpy_helper.from_array(np.maximum(a, np.float32(floor)), init.name))
            n += 1
    return model, n


def convtranspose_to_d2s(model):
    """ConvTranspose with kernel 2, stride 2, no padding, group 1 -> ``Conv`` 1x1 to 4*C_out channels
    + ``DepthToSpace(blocksize=2, mode=CRD)``. Identical maths:
    out[o, 2i+a, 2j+b] = sum_c x[c, i, j] W[c, o, a, b] + bias[o]. Returns (model, number replaced)."""
    from onnx import helper, numpy_helper

    g = model.graph
    names = _Names(g)
    inits = {i.name: i for i in g.initializer}
    out_nodes, n = [], 0
    for node in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ok = (node.op_type == "ConvTranspose" and node.input[1] in inits
              and list(attrs.get("kernel_shape", [2, 2])) == [2, 2] and list(attrs.get("strides", [1, 1])) == [2, 2]
              and not any(attrs.get("pads", [0, 0, 0, 0])) and attrs.get("group", 1) == 1
              and list(attrs.get("dilations", [1, 1])) == [1, 1] and not any(attrs.get("output_padding", [0, 0]))
              and "output_shape" not in attrs and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))
        w = numpy_helper.to_array(inits[node.input[1]]) if ok else None
        if not ok or w.ndim != 4 or w.shape[2:] != (2, 2):
            out_nodes.append(node)
            continue
        c_in, c_out = w.shape[:2]
        w2 = np.ascontiguousarray(w.transpose(1, 2, 3, 0).reshape(c_out * 4, c_in, 1, 1))
        base = node.name or "convtranspose"
        conv_in = [node.input[0], _const(g, names, f"{base}/d2s_weight", w2)]
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(inits[node.input[2]])
            conv_in.append(_const(g, names, f"{base}/d2s_bias", np.repeat(bias, 4)))
        mid = names(f"{base}/d2s_conv_out")
        out_nodes += [helper.make_node("Conv", conv_in, [mid], name=names(f"{base}/d2s_conv"),
                                       kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0]),
                      helper.make_node("DepthToSpace", [mid], [node.output[0]], name=names(f"{base}/d2s"),
                                       blocksize=2, mode="CRD")]
        n += 1
    del g.node[:]
    g.node.extend(out_nodes)
    _drop_unused_initializers(model)
    return model, n


def _drop_unused_initializers(model) -> None:
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def fix_dims(model, dims: dict[str, int] | None = None, shapes: dict[str, list[int]] | None = None):
    """Make symbolic dimensions static: ``dims`` maps a dim_param name (e.g. "batch") to a number,
    ``shapes`` maps an input name to its full shape. Output shapes are refreshed by shape inference."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import is_fixed_size_tensor, make_dim_param_fixed, make_input_shape_fixed

    for name, value in (dims or {}).items():
        make_dim_param_fixed(model.graph, name, int(value))
    for name, shape in (shapes or {}).items():
        make_input_shape_fixed(model.graph, name, [int(s) for s in shape])
    for vi in list(model.graph.value_info):  # stale symbolic intermediate shapes would fight inference
        model.graph.value_info.remove(vi)
    # onnxruntime's fix_output_shapes, on the graph without its weights when it is over 2 GB
    inferred = onnx.shape_inference.infer_shapes(_weightless(model) if needs_external_data(model) else model)
    for out, new in zip(model.graph.output, inferred.graph.output):
        if not is_fixed_size_tensor(out) and is_fixed_size_tensor(new):
            out.type.tensor_type.shape.CopyFrom(new.type.tensor_type.shape)
    return model


def symbolic_inputs(model) -> dict[str, list]:
    """Inputs that still have a symbolic or unknown dimension: name -> shape (str for symbols)."""
    out = {}
    for i in model.graph.input:
        shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in i.type.tensor_type.shape.dim]
        if any(not isinstance(s, int) or s <= 0 for s in shape):
            out[i.name] = shape
    return out


def input_shapes(model) -> dict[str, list]:
    return {i.name: [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
                     for d in i.type.tensor_type.shape.dim] for i in model.graph.input}


def prune(src: str | Path, dst: str | Path, outputs: list[str], inputs: list[str] | None = None) -> Path:
    """Keep only ``outputs`` and the nodes they need; inputs that are no longer used are dropped
    (``inputs`` restricts the candidates). Uses ``onnx.utils.Extractor``."""
    import onnx
    from onnx.utils import Extractor

    model = _infer(onnx.load(str(src)))
    known = {v.name for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
    for name in outputs:  # shape inference does not reach every tensor (e.g. some QDQ outputs)
        if name not in known:
            model.graph.value_info.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    all_inputs = [i.name for i in model.graph.input]
    ex = Extractor(model)
    # which inputs the kept outputs still reach
    nodes = ex._collect_reachable_nodes(all_inputs, outputs)  # noqa: SLF001 - the public API needs the inputs
    reached = {i for n in nodes for i in n.input}
    keep = [i for i in (inputs or all_inputs) if i in reached]
    save_onnx(ex.extract_model(keep, outputs), dst)
    return Path(dst)


def qnn_preprocess(src: str | Path, dst: str | Path, **kw) -> bool:
    """onnxruntime's ``qnn_preprocess_model`` (``kw``: its options), writing a model over 2 GB with its
    tensors in ``<dst>.data``; False when it changed nothing (``dst`` then not written)."""
    import contextlib

    from onnxruntime.quantization.execution_providers.qnn import qnn_preprocess_model

    dst = Path(dst)
    if is_large(src):
        if Path(src).resolve() != dst.resolve():  # (in place, the tensors are read before the file is rewritten)
            Path(str(dst) + ".data").unlink(missing_ok=True)
        kw = {**kw, "save_as_external_data": True, "all_tensors_to_one_file": True,
              "external_data_location": dst.name + ".data"}
    with contextlib.chdir(dst.parent):  # onnx resolves the data file against the working directory too
        return bool(qnn_preprocess_model(str(src), str(dst), **kw))


def fold(src: str | Path, dst: str | Path, *, free_dims: dict[str, int] | None = None) -> Path:
    """onnxruntime's basic (standard-op only) offline optimisation, saved to ``dst``: constant folding
    (with static shapes this removes Shape/Gather/Concat/Reshape-target chains), identity/dropout removal;
    MatMul + Add stay two nodes.
    Standard ONNX ops only, so any execution provider can load the result."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    if is_large(src):  # the optimized model is written with its tensors in <dst>.data (protobuf's 2 GB limit)
        Path(str(dst) + ".data").unlink(missing_ok=True)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", Path(dst).name + ".data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    # MatMulAddFusion (MatMul + Add -> Gemm) is not needed to fold, and onnxruntime's pass fails on the
    # MobileSAM-size decoder body ("AddInitializedOrtValue Attempt to replace the existing tensor")
    so.add_session_config_entry("optimization.disable_specified_optimizers", "MatMulAddFusion")
    for name, value in (free_dims or {}).items():
        so.add_free_dimension_override_by_name(name, int(value))
    ort.InferenceSession(str(src), sess_options=so, providers=["CPUExecutionProvider"])
    return Path(dst)


def op_counts(model) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def _static_shape(shapes: dict[str, list], name: str) -> list[int] | None:
    s = shapes.get(name)
    return s if s is not None and all(isinstance(d, int) and d > 0 for d in s) else None


def _weightless(model):
    """A copy of ``model`` whose large initializers keep name, type and dims but no data (marked external):
    shape inference needs only their dims, and a model over protobuf's 2 GB (the SD1.5 UNet, 3.4 GB)
    cannot be serialized, which every shape inference does first. Small tensors (shape constants) stay;
    no weight is copied."""
    import onnx

    light = onnx.ModelProto()
    light.ir_version, light.producer_name, light.domain = model.ir_version, model.producer_name, model.domain
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g, lg = model.graph, light.graph
    lg.name = g.name
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(lg, field).extend(getattr(g, field))
    for t in g.initializer:
        if t.ByteSize() <= 4096:
            lg.initializer.append(t)
            continue
        stub = lg.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        stub.external_data.add(key="location", value="(not loaded)")
    return light


def _infer(model):
    """The model with value_info filled by onnxruntime's symbolic shape inference (it knows contrib
    ops such as com.microsoft Gelu, where onnx's inference stops), else by onnx's. A model over 2 GB is
    inferred without its weights and gets the value_info in place."""
    if needs_external_data(model):
        inferred = _infer(_weightless(model))
        del model.graph.value_info[:]
        model.graph.value_info.extend(inferred.graph.value_info)
        return model
    import onnx

    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        out = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=False)
        if out is not None:
            return out
    except Exception:  # noqa: BLE001
        pass
    return onnx.shape_inference.infer_shapes(model)


def _shape_table(model) -> dict[str, list]:
    """tensor name -> shape (ints, or None for unknown/symbolic dims), from onnxruntime's symbolic
    shape inference (it follows dims through Expand/Concat/Reshape where onnx's own inference stops),
    falling back to onnx's."""
    import onnx

    full, model = model, (_weightless(model) if needs_external_data(model) else model)
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=False)
    except Exception:  # noqa: BLE001 - some graphs defeat it; onnx's inference still helps
        inferred = None
    if inferred is None:
        inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in full.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def remove_noops(model):
    """Bypass nodes that do nothing with static shapes, which NPU compilers handle badly (QNN HTP
    crashes on a 5-D all-ones ``Tile``): Tile with all-ones repeats, Expand/Reshape whose output shape
    equals the input's, and Reshape/Unsqueeze/Squeeze chains feeding a Reshape (the chain collapses to
    one Reshape). Returns (model, number of nodes removed)."""
    from onnx import numpy_helper

    removed_total = 0
    while True:
        g = model.graph
        shapes = _shape_table(model)
        inits = _initializers(g)
        consumers: dict[str, int] = {}
        for n in g.node:
            for i in n.input:
                consumers[i] = consumers.get(i, 0) + 1
        producer = {o: n for n in g.node for o in n.output}
        outputs = {o.name for o in g.output}
        rename: dict[str, str] = {}
        drop: set[int] = set()
        for n in g.node:
            if n.output[0] in outputs:
                continue
            src = n.input[0] if n.input else None
            same = (_static_shape(shapes, src) is not None
                    and _static_shape(shapes, src) == _static_shape(shapes, n.output[0]))
            if n.op_type == "Tile" and n.input[1] in inits and np.all(inits[n.input[1]] == 1):
                rename[n.output[0]] = src
            elif n.op_type in ("Expand", "Reshape") and same:
                rename[n.output[0]] = src
            elif n.op_type == "Reshape" and src in producer and consumers.get(src) == 1 \
                    and producer[src].op_type in ("Reshape", "Unsqueeze", "Squeeze", "Flatten") \
                    and id(producer[src]) not in drop and n.input[1] in inits and 0 not in inits[n.input[1]]:
                n.input[0] = producer[src].input[0]       # Reshape(Unsqueeze(x)) -> Reshape(x)
                drop.add(id(producer[src]))
                break
            else:
                continue
            drop.add(id(n))
        if not drop:
            break
        for n in g.node:
            for k, i in enumerate(n.input):
                while i in rename:
                    i = rename[i]
                n.input[k] = i
        keep = [n for n in g.node if id(n) not in drop]
        removed_total += len(g.node) - len(keep)
        del g.node[:]
        g.node.extend(keep)
    _drop_unused_initializers(model)
    return model, removed_total


def fold_known_dims(model):
    """Replace shape arithmetic on dimensions that are static even though others are symbolic:
    ``Shape(x)`` when all of x's dims are known, ``Gather(Shape(x), k)`` and ``Slice(Shape(x), a, b)``
    when the selected dims are known. Lets one graph keep a symbolic dimension (e.g. the number of
    prompt points) while everything else becomes constant. Returns (model, number replaced)."""
    from onnx import helper, numpy_helper

    g = model.graph
    shapes = _shape_table(model)
    inits = _initializers(g)
    producer = {o: n for n in g.node for o in n.output}
    names = _Names(g)

    def shape_of(node) -> list | None:
        s = shapes.get(node.input[0])
        if s is None:
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", None)
        return s[start:end]

    replaced = 0
    for node in list(g.node):
        value = None
        if node.op_type == "Shape":
            s = shape_of(node)
            if s is not None and all(isinstance(d, int) and d > 0 for d in s):
                value = np.array(s, np.int64)
        elif node.op_type == "Gather" and node.input[0] in producer and producer[node.input[0]].op_type == "Shape" \
                and node.input[1] in inits:
            s = shape_of(producer[node.input[0]])
            idx = inits[node.input[1]]
            if s is not None:
                picked = [s[int(i)] for i in np.atleast_1d(idx)]
                if all(isinstance(d, int) and d > 0 for d in picked):
                    value = np.array(picked, np.int64).reshape(idx.shape)
        elif node.op_type == "Slice" and node.input[0] in producer and producer[node.input[0]].op_type == "Shape" \
                and all(i in inits for i in node.input[1:3]) and len(node.input) <= 4:
            s = shape_of(producer[node.input[0]])
            if s is not None:
                a, b = int(inits[node.input[1]][0]), int(inits[node.input[2]][0])
                picked = s[a:b]
                if picked and all(isinstance(d, int) and d > 0 for d in picked):
                    value = np.array(picked, np.int64)
        if value is None:
            continue
        cname = _const(g, names, f"{node.output[0]}_known", value)
        out = node.output[0]
        for other in g.node:
            for k, i in enumerate(other.input):
                if i == out:
                    other.input[k] = cname
        for o in g.output:
            if o.name == out:
                break
        g.node.remove(node)
        replaced += 1
    return model, replaced


def slices_to_split(model):
    """Two or more ``Slice`` nodes that cut one tensor into contiguous pieces along one axis (as
    ``torch.chunk`` exports, e.g. GEGLU's gate) -> one ``Split``. Same values, one node instead of
    several. Returns (model, number of Split nodes made)."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = _initializers(g)
    shapes = _shape_table(model)
    names = _Names(g)
    groups: dict[tuple[str, int], list] = {}
    for n in g.node:
        if n.op_type != "Slice" or len(n.input) < 4 or not all(i in inits for i in n.input[1:4]):
            continue
        if len(n.input) > 4 and n.input[4] and not np.all(inits.get(n.input[4], np.array([0])) == 1):
            continue
        starts, ends, axes = (inits[i].ravel() for i in n.input[1:4])
        shape = _static_shape(shapes, n.input[0])
        if len(starts) != 1 or shape is None:
            continue
        axis = int(axes[0]) % len(shape)
        s, e = int(starts[0]), int(ends[0])
        s = s + shape[axis] if s < 0 else s
        e = min(e + shape[axis] if e < 0 else e, shape[axis])
        groups.setdefault((n.input[0], axis), []).append((s, e, n))
    made = 0
    for (src, axis), parts in groups.items():
        parts.sort(key=lambda p: p[0])
        size = _static_shape(shapes, src)[axis]
        contiguous = parts[0][0] == 0 and parts[-1][1] == size and all(
            a[1] == b[0] for a, b in zip(parts, parts[1:]))
        if len(parts) < 2 or not contiguous:
            continue
        split = _const(g, names, f"{src}_split_sizes", np.array([e - s for s, e, _ in parts], np.int64))
        node = helper.make_node("Split", [src, split], [p[2].output[0] for p in parts],
                                name=names(f"{parts[0][2].name}_as_split"), axis=axis)
        first = min(list(g.node).index(p[2]) for p in parts)
        for p in parts:
            g.node.remove(p[2])
        g.node.insert(first, node)
        made += 1
    _drop_unused_initializers(model)
    return model, made


def split_head(src: str | Path, head_dst: str | Path, body_dst: str | Path, head_inputs: list[str],
               names: dict[str, str] | None = None) -> list[str]:
    """Split a graph in two at the smallest cut below ``head_inputs``: the *head* computes everything
    that depends on ``head_inputs`` alone (e.g. MobileSAM's prompt encoder: point labels compared with
    -1/0/1/2/3, sine/cosine position encodings — exact on the CPU, ruined by static quantization), the
    *body* the rest. Returns the cut tensor names (head outputs = body inputs); ``names`` renames
    them in the order found (as list of new names)."""
    import onnx
    from onnx.utils import Extractor

    model = onnx.load(str(src))
    g = model.graph
    const = {i.name for i in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant"}
    # 1. nodes whose non-constant inputs all come from the head inputs
    pure, head_nodes = set(head_inputs), []
    for n in g.node:
        ins = [i for i in n.input if i and i not in const]
        if ins and all(i in pure for i in ins):
            head_nodes.append(n)
            pure.update(n.output)

    def frontier(nodes):
        inside = {o for n in nodes for o in n.output}
        ids = {id(n) for n in nodes}
        return sorted({i for n in g.node if id(n) not in ids for i in n.input if i in inside}
                      | {o.name for o in g.output if o.name in inside})

    # 2. shrink: a head tensor computed from another cut tensor belongs to the body
    while True:
        cut = frontier(head_nodes)
        producer = {o: n for n in head_nodes for o in n.output}
        moved = set()
        for c in cut:
            down = {c}
            for n in head_nodes:           # topological order: collect head nodes downstream of c
                if any(i in down for i in n.input):
                    down.update(n.output)
                    moved.add(id(n))
        moved -= {id(producer[c]) for c in cut}     # a cut tensor's own producer stays in the head...
        for c in cut:                                # ...unless it is itself downstream of another cut tensor
            if any(i in {o for n in head_nodes if id(n) in moved for o in n.output} for i in producer[c].input):
                moved.add(id(producer[c]))
        keep = [n for n in head_nodes if id(n) not in moved]
        if len(keep) == len(head_nodes):
            break
        head_nodes = keep
    cut = frontier(head_nodes)
    rename = dict(zip(cut, names or cut))
    # 3. rename the cut tensors, then extract both graphs
    for n in g.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
        n.output[:] = [rename.get(o, o) for o in n.output]
    model = _infer(model)
    known = {v.name for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    for new in rename.values():
        if new not in known:
            model.graph.value_info.append(onnx.helper.make_tensor_value_info(new, onnx.TensorProto.FLOAT, None))
    ex = Extractor(model)
    onnx.save(ex.extract_model(head_inputs, list(rename.values())), str(head_dst))
    body_inputs = [i.name for i in model.graph.input if i.name not in head_inputs] + list(rename.values())
    outs = [o.name for o in model.graph.output]
    body = ex.extract_model(body_inputs, outs)
    used = {i for n in body.graph.node for i in n.input}
    keep_in = [i for i in body.graph.input if i.name in used]
    del body.graph.input[:]
    body.graph.input.extend(keep_in)
    onnx.save(body, str(body_dst))
    return list(rename.values())


def rename_tensors(model, mapping: dict[str, str]):
    """Rename tensors (graph inputs/outputs, node inputs/outputs, value_info)."""
    g = model.graph
    for n in g.node:
        n.input[:] = [mapping.get(i, i) for i in n.input]
        n.output[:] = [mapping.get(o, o) for o in n.output]
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.name = mapping.get(vi.name, vi.name)
    return model


def set_dim(model, tensor: str, axis: int, value: int | str):
    """Set one dimension of a graph input to a number or a symbolic name."""
    for vi in model.graph.input:
        if vi.name == tensor:
            d = vi.type.tensor_type.shape.dim[axis]
            if isinstance(value, str):
                d.dim_param = value
            else:
                d.dim_value = int(value)
            return model
    raise KeyError(tensor)
