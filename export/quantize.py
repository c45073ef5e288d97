"""ONNX quantization helpers shared by the export recipes, over ``onnxruntime.quantization`` and
``onnxruntime.transformers.float16`` (no quantizer of our own):

- :func:`dynamic_int8`  weights int8, activations quantized at run time (CPU; MatMul/Gemm by default)
- :func:`fp16`          float16 weights and compute, float32 inputs/outputs kept
- :func:`static_qdq`    static int8 in QDQ format from a calibration reader (for NPU execution providers)
- :func:`save_onnx`     save a ModelProto, with external data when it would pass protobuf's 2 GB limit
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # stay clear of the 2 GB hard limit


def onnx_size(path: str | Path) -> int:
    """Bytes of an ONNX model including its external data files next to it."""
    path = Path(path)
    total = path.stat().st_size
    data = path.with_name(path.name + ".data")
    if data.exists():
        total += data.stat().st_size
    return total


def needs_external_data(model) -> bool:
    return model.ByteSize() > PROTOBUF_LIMIT if _byte_size_ok(model) else True


def _byte_size_ok(model) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:  # protobuf refuses to size messages over 2 GB
        return False


def save_onnx(model, path: str | Path, *, external: bool | None = None) -> Path:
    """Save ``model``; tensors go to one ``<name>.data`` file beside it when the model is over ~2 GB
    (or ``external=True``)."""
    import onnx

    path = Path(path)
    if external is None:
        external = needs_external_data(model)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    if external:
        # onnx checks that the data file does not exist relative to the working directory: work from its folder
        with contextlib.chdir(path.parent):
            onnx.save_model(model, path.name, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return path


def is_large(path: str | Path) -> bool:
    return onnx_size(path) > PROTOBUF_LIMIT


def dynamic_int8(src: str | Path, dst: str | Path, *, op_types: Sequence[str] = ("MatMul", "Gemm"),
                 per_channel: bool = False, nodes_to_exclude: Sequence[str] = ()) -> Path:
    """Dynamic int8: weights of ``op_types`` stored 8-bit, activations quantized per call (except the nodes
    named in ``nodes_to_exclude``). With Conv in ``op_types`` weights are uint8 (onnxruntime's CPU
    ConvInteger kernel takes only uint8 weights)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    large = is_large(src)
    weight_type = QuantType.QUInt8 if "Conv" in op_types else QuantType.QInt8
    quantize_dynamic(str(src), str(dst), weight_type=weight_type, op_types_to_quantize=list(op_types),
                     per_channel=per_channel, use_external_data_format=large, nodes_to_exclude=list(nodes_to_exclude),
                     extra_options={"MatMulConstBOnly": True,  # float where inference stops at a contrib op
                                    "DefaultTensorType": 1})
    if large:
        _consolidate(dst)
    return Path(dst)


def fp16(src: str | Path, dst: str | Path, *, op_block_list: Sequence[str] | None = None) -> Path:
    """float16 weights and compute; graph inputs and outputs stay float32 (keep_io_types)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src), load_external_data=True)
    blocked = list(DEFAULT_OP_BLOCK_LIST) + list(op_block_list or [])
    large = needs_external_data(model)
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked,
                                    disable_shape_infer=large)
    return save_onnx(half, dst, external=needs_external_data(half))


class FeedsReader:
    """A CalibrationDataReader over a list of feed dicts (name -> numpy array)."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._it = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def static_qdq(src: str | Path, dst: str | Path, reader, *, per_channel: bool = True,
               op_types: Sequence[str] | None = None, activation_type: str = "QUInt8",
               calibrate_method: str = "MinMax") -> Path:
    """Static int8 in QDQ format (QuantizeLinear/DequantizeLinear pairs), the form NPU execution
    providers (QNN, OpenVINO, NNAPI) consume; ``reader`` yields calibration feeds (see FeedsReader)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    large = is_large(src)
    quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=getattr(QuantType, activation_type), weight_type=QuantType.QInt8,
                    op_types_to_quantize=list(op_types) if op_types else None,
                    calibrate_method=getattr(CalibrationMethod, calibrate_method),
                    use_external_data_format=large)
    if large:
        _consolidate(dst)
    return Path(dst)


def _consolidate(path: str | Path) -> None:
    """Rewrite a model's external tensors into a single ``<name>.data`` file (or inline if small)."""
    import onnx

    path = Path(path)
    folder = path.parent
    before = set(os.listdir(folder))
    model = onnx.load(str(path), load_external_data=True)
    locations = {init.external_data[i].value for init in model.graph.initializer
                 for i in range(len(init.external_data)) if init.external_data[i].key == "location"}
    for init in model.graph.initializer:  # now loaded in memory: drop the old references
        del init.external_data[:]
        init.data_location = onnx.TensorProto.DEFAULT
    save_onnx(model, path)
    keep = {path.name, path.name + ".data"}
    for name in locations & before - keep:
        (folder / name).unlink(missing_ok=True)
