"""Static tensor shapes of an ONNX graph with its inputs fixed, inferred on a copy without its large weights
(cheap for multi-GB graphs): what the Winograd rewrite and the benches' MAC counts read."""

from __future__ import annotations

import math
from pathlib import Path


def static_shapes(model, input_shapes: dict[str, list[int]] | None = None,
                  base_dir: str | Path | None = None) -> dict[str, list[int] | None]:
    """Tensor name -> dims with the graph inputs fixed to ``input_shapes`` (onnxruntime's symbolic shape
    inference, which follows Shape -> Reshape chains; onnx's own as a fallback). A copy of ``model``
    without its weights is inferred, so this is cheap for multi-GB graphs (``base_dir``: where a model loaded
    without its external data keeps it; its small tensors are read from there)."""
    import onnx

    skeleton = _copy_without_weights(model, base_dir)
    for inp in skeleton.graph.input:
        if input_shapes and inp.name in input_shapes:
            for d, v in zip(inp.type.tensor_type.shape.dim, input_shapes[inp.name]):
                d.ClearField("dim_param")
                d.dim_value = int(v)
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(skeleton, auto_merge=True)
    except Exception:  # noqa: BLE001 - fall back to onnx's own inference (fewer shapes resolved)
        inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    out: dict[str, list[int] | None] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        tt = vi.type.tensor_type
        out[vi.name] = ([d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
                        if tt.HasField("shape") else None)
    out.update({t.name: list(t.dims) for t in model.graph.initializer})
    return out


def _copy_without_weights(model, base_dir: str | Path | None = None):
    """A copy of ``model``'s graph whose large initializers keep their dims but no data (small ones, such
    as Reshape targets and biases, keep their values: shape propagation reads them)."""
    import onnx

    dest = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name)
    dest.opset_import.extend(model.opset_import)
    g = dest.graph
    g.name = model.graph.name
    for field in ("node", "input", "output", "value_info"):
        getattr(g, field).extend(getattr(model.graph, field))
    for init in model.graph.initializer:
        if math.prod(init.dims) <= 2**16 and not init.external_data:
            g.initializer.append(init)
        elif math.prod(init.dims) <= 2**16 and base_dir is not None:  # a small tensor saved beside the model
            from onnx.external_data_helper import load_external_data_for_tensor

            t = g.initializer.add()
            t.CopyFrom(init)
            load_external_data_for_tensor(t, str(base_dir))
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
        else:
            g.initializer.add(name=init.name, data_type=init.data_type, dims=list(init.dims))
    return dest
