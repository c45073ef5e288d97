"""ONNX quantization helpers shared by the export recipes, over ``onnxruntime.quantization`` and
``onnxruntime.transformers.float16`` (no quantizer of our own):

- :func:`dynamic_int8`  weights int8, activations quantized at run time (CPU; MatMul/Gemm by default)
- :func:`fp16`          float16 weights and compute, float32 inputs/outputs kept
- :func:`static_qdq`    static int8 in QDQ format from a calibration reader (for NPU execution providers)
- :func:`nncf_int8`     OpenVINO int8 (the ``int8-ov`` precision): NNCF post-training quantization of the
                        OpenVINO model read from an fp32 ONNX file, saved as OpenVINO IR (.xml + .bin)
- :func:`save_onnx`     save a ModelProto, with external data when it would pass protobuf's 2 GB limit
- :func:`move_onnx`     move a model and stream its external tensors into one data file (no weights in memory)
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # stay clear of the 2 GB hard limit


def onnx_size(path: str | Path) -> int:
    """Bytes of an ONNX model including its external data files next to it (an OpenVINO IR: .xml + .bin)."""
    path = Path(path)
    if path.suffix == ".xml":
        return ir_size(path)
    total = path.stat().st_size
    for name in _external_files(path):  # any name: a graph rewritten beside its source keeps the source's file
        data = path.parent / name
        if data.is_file():
            total += data.stat().st_size
    return total


def _external_files(path: Path) -> set[str]:
    """The data files ``path``'s tensors refer to (read without the weights; a model of several hundred
    MB with inline weights has none, and is not parsed for it)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    if path.stat().st_size > 256 << 20:
        return set()
    graph = onnx.load(str(path), load_external_data=False)
    return {_external_info(t)["location"] for t in _get_all_tensors(graph)
            if t.data_location == onnx.TensorProto.EXTERNAL and "location" in _external_info(t)}


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
    extra = {"MatMulConstBOnly": True,  # float where inference stops at a contrib op
             "DefaultTensorType": 1}
    if large:
        _dynamic_int8_streamed(Path(src), Path(dst), weight_type, list(op_types), per_channel, list(nodes_to_exclude),
                               extra)
        return Path(dst)
    quantize_dynamic(str(src), str(dst), weight_type=weight_type, op_types_to_quantize=list(op_types),
                     per_channel=per_channel, nodes_to_exclude=list(nodes_to_exclude), extra_options=extra)
    return Path(dst)


def _dynamic_int8_streamed(src: Path, dst: Path, weight_type, op_types: list[str], per_channel: bool,
                           nodes_to_exclude: list[str], extra_options: dict) -> None:
    """quantize_dynamic's own steps (onnxruntime's ONNXQuantizer) on a model read without its weights: the
    quantizer reads each float weight from disk when it quantizes it, and the result is written with
    :func:`save_streamed`. quantize_dynamic itself loads the model whole, copies it for shape inference and
    again to save: 11.3 GB for the 3.4 GB SD1.5 UNet, against about the float weights it quantizes here."""
    from unittest import mock

    import onnx
    from onnxruntime.quantization import onnx_quantizer
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import QuantizationMode, QuantType, add_infer_metadata, \
        update_opset_version

    model = onnx.load(str(src), load_external_data=False)
    model = onnx.shape_inference.infer_shapes(model)  # types and shapes only: the weights are not needed
    add_infer_metadata(model)
    model = update_opset_version(model, weight_type)
    def reinfer(m):  # the quantizer re-infers shapes through a temp-folder copy that loses the weights' files:
        m = onnx.shape_inference.infer_shapes(m)  # infer in memory instead (types and shapes need no weights)
        add_infer_metadata(m)
        return m

    # the quantizer reads a weight with onnx.numpy_helper.to_array(tensor), which resolves the tensor's external
    # data location against the working directory: work from the model's folder
    with contextlib.chdir(src.parent), mock.patch.object(onnx_quantizer, "save_and_reload_model_with_shape_infer",
                                                         reinfer):
        quantizer = ONNXQuantizer(model, per_channel, False, QuantizationMode.IntegerOps, False, weight_type,
                                  QuantType.QUInt8, None, [], nodes_to_exclude, op_types, dict(extra_options))
        quantizer.quantize_model()
        out = quantizer.model
        out.topological_sort()
        save_streamed(out.model, dst, src.parent)


def fp16(src: str | Path, dst: str | Path, *, op_block_list: Sequence[str] | None = None) -> Path:
    """float16 weights and compute; graph inputs and outputs stay float32 (keep_io_types)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    blocked = list(DEFAULT_OP_BLOCK_LIST) + list(op_block_list or [])
    if is_large(src):
        return _fp16_streamed(Path(src), Path(dst), blocked)
    model = onnx.load(str(src), load_external_data=True)
    large = needs_external_data(model)
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked,
                                    disable_shape_infer=large)
    return save_onnx(half, dst, external=needs_external_data(half))


def _fp16_streamed(src: Path, dst: Path, blocked: list[str]) -> Path:
    """onnxruntime's convert_float_to_float16 on the graph read without its weights (it decides which
    initializers become float16 and where Casts go), then each such weight converted with its own
    convert_np_to_float16 while it is copied to ``dst``'s data file, one tensor at a time (loading the SD1.5
    UNet whole to convert it peaked at ~8 GB)."""
    from unittest import mock

    import onnx
    from onnx import helper
    from onnxruntime.transformers import float16 as f16

    model = onnx.load(str(src), load_external_data=False)
    external_float = {t.name for t in model.graph.initializer
                      if t.data_type == onnx.TensorProto.FLOAT and t.data_location == onnx.TensorProto.EXTERNAL}

    def value_info(tensor):  # its own reads the (absent) data only for the shape, which the dims give
        return helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))

    with mock.patch.object(f16, "make_value_info_from_tensor", value_info):
        half = f16.convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked, disable_shape_infer=True)

    def to_half(data: bytes) -> bytes:
        return f16.convert_np_to_float16(np.frombuffer(data, dtype=np.float32)).tobytes()

    recode = {t.name: to_half for t in half.graph.initializer
              if t.name in external_float and t.data_type == onnx.TensorProto.FLOAT16}
    return save_streamed(half, dst, src.parent, recode=recode)


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

    if is_large(src):
        static_qdq_streamed(Path(src), Path(dst), reader, per_channel, op_types, getattr(QuantType, activation_type),
                             QuantType.QInt8, getattr(CalibrationMethod, calibrate_method))
        return Path(dst)
    quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=getattr(QuantType, activation_type), weight_type=QuantType.QInt8,
                    op_types_to_quantize=list(op_types) if op_types else None,
                    calibrate_method=getattr(CalibrationMethod, calibrate_method))
    return Path(dst)


OV_WEIGHT_LIMIT = 64
"""The largest |int8 weight| in an int8-ov IR (NNCF's overflow fix: 7-bit weights, so two u8 x s8 products summed in a
16-bit register cannot saturate on CPUs without VNNI)."""


def nncf_int8(src: str | Path, dst: str | Path, feeds: Sequence[dict[str, np.ndarray]], *,
              transformer: bool = True, fast_bias_correction: bool = True) -> Path:
    """NNCF post-training int8 (weights int8 per channel, activations calibrated on ``feeds``) of the OpenVINO
    model read from the fp32 ONNX ``src``; writes the IR ``dst`` (.xml, its weights in the .bin beside it).

    ``transformer``: NNCF's transformer scheme (what optimum-intel uses for diffusion UNets and ViTs): softmax,
    layer norms and the other accuracy-critical inputs stay float, SmoothQuant on the MatMuls. The IR keeps
    fp32 weights for the float parts (``compress_to_fp16=False``): the runtime loads exactly what was verified.

    Every layer's weights keep NNCF's overflow headroom (7-bit values, :data:`OV_WEIGHT_LIMIT`), not only the first
    layer's (NNCF's default): a CPU without VNNI multiplies u8 x s8 pairs into saturating 16-bit sums, and an IR
    quantized anywhere may run on one. Measured on an AVX2-only CPU (MobileSAM-size encoder, seeded random
    weights, astronaut photo): default embedding error 12.8 % vs fp32, masks IoU 0.87-0.93 over 20 clicks; with the
    headroom 4.0 %, IoU 0.955-0.979, at the same speed (1.11 / 1.12 s)."""
    import nncf
    import openvino as ov

    dst = Path(dst)
    if dst.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR path ends in .xml, got {dst.name}")
    if not feeds:
        raise ValueError("nncf_int8 needs calibration feeds")
    model = ov.Core().read_model(str(src))
    quantized = nncf.quantize(model, nncf.Dataset(list(feeds)), subset_size=len(feeds),
                              model_type=nncf.ModelType.TRANSFORMER if transformer else None,
                              fast_bias_correction=fast_bias_correction,
                              advanced_parameters=nncf.AdvancedQuantizationParameters(
                                  overflow_fix=nncf.OverflowFix.ENABLE))
    del model
    ov.save_model(quantized, str(dst), compress_to_fp16=False)
    return dst


def ir_size(path: str | Path) -> int:
    """Bytes of an OpenVINO IR (.xml + .bin)."""
    path = Path(path)
    return path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.with_suffix(".bin").exists() else 0)


def static_qdq_streamed(src: Path, dst: Path, reader, per_channel: bool, op_types: Sequence[str] | None,
                        activation_type, weight_type, calibrate_method, *, extra_options: dict | None = None,
                        nodes_to_exclude: Sequence[str] = ()) -> None:
    """quantize_static's own two steps, one after the other instead of overlapping, neither holding the weights:
    1. onnxruntime's calibrator on the graph read without its weights (its session reads them from src's data
    file), freed before 2. its QDQQuantizer on the same graph (each weight read from disk as it is quantized),
    written with :func:`save_streamed`. quantize_static keeps the whole model loaded while its calibrator
    holds another and the calibration session a third (11 GB for the SD1.5 UNet). ``extra_options`` and
    ``nodes_to_exclude``: the quantizer's (export.npu.quant passes a QNN configuration's)."""
    from unittest import mock

    import onnx
    from onnxruntime.quantization import base_quantizer, calibrate
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import add_infer_metadata, update_opset_version
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    ops = list(op_types) if op_types else list(set(QLinearOpsRegistry) | set(QDQRegistry))

    def reinfer(m):  # shapes and types in memory: they need no weights
        m = onnx.shape_inference.infer_shapes(m)
        add_infer_metadata(m)
        return m

    def skeleton(path) -> onnx.ModelProto:  # the calibrator's loader, without the weights
        return reinfer(onnx.load(str(path), load_external_data=False))

    # 1. activation ranges: the calibrator augments the graph read without its weights and saves it beside src,
    # so its session reads src's own data file (it would otherwise hold the model while its session loads a copy)
    augmented = src.with_name(f".{src.stem}.augmented.onnx")
    try:
        with mock.patch.object(calibrate, "load_model_with_shape_infer", skeleton), \
                mock.patch.object(calibrate.CalibraterBase, "create_inference_session", _calibration_session):
            calibrator = calibrate.create_calibrator(src, ops, augmented_model_path=str(augmented),
                                                     calibrate_method=calibrate_method, use_external_data_format=True)
        # (no max_intermediate_outputs: onnxruntime 1.32 drops the batches it clears; the outputs it keeps are the
        # augmented graph's per-tensor ReduceMin/ReduceMax, a few numbers per feed)
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
        del calibrator
    finally:
        augmented.unlink(missing_ok=True)

    # 2. QDQ over the weights on disk
    model = onnx.load(str(src), load_external_data=False)
    model = update_opset_version(reinfer(model), weight_type)
    with contextlib.chdir(src.parent), mock.patch.object(base_quantizer, "save_and_reload_model_with_shape_infer",
                                                         reinfer):
        quantizer = QDQQuantizer(model, per_channel, False, weight_type, activation_type, ranges, [],
                                 list(nodes_to_exclude), ops, dict(extra_options or {}))
        quantizer.quantize_model()
        quantizer.model.topological_sort()
        save_streamed(quantizer.model.model, dst, src.parent)


def _calibration_session(calibrator) -> None:
    """onnxruntime's calibration session (CalibraterBase.create_inference_session: no graph optimization, the
    calibrator's providers) run in priority order (which followed the calibrator's node order) and without the memory
    pattern.

    The calibrator places each ReduceMin/ReduceMax right before the first consumer of the tensor it measures; in
    onnxruntime's default order they ran late and kept the tensors alive. Over the SD1.5 UNet at 256 px (measured,
    peak RSS): 5.2 GB a run in the default order against 3.6 GB in priority order (the UNet without them: 3.6 GB);
    the memory pattern then added ~1.5 GB from the second feed (6.6 GB)."""
    import onnxruntime

    so = onnxruntime.SessionOptions()
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.execution_order = onnxruntime.ExecutionOrder.PRIORITY_BASED
    so.enable_mem_pattern = False
    calibrator.infer_session = onnxruntime.InferenceSession(calibrator.augmented_model_path, sess_options=so,
                                                            providers=calibrator.execution_providers)


def _consolidate(path: str | Path) -> None:
    """Rewrite a model's external tensors into a single ``<name>.data`` file (or inline if small)."""
    move_onnx(path, path)


def _external_info(tensor) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def move_onnx(src: str | Path, dst: str | Path, *, chunk: int = 64 << 20) -> Path:
    """Write the model ``src`` (its external tensors in any number of files beside it) as ``dst`` with every
    tensor in one ``<dst>.data`` file, or inline when the whole model is under protobuf's limit.

    Large models are streamed: the graph is read without its weights and each tensor's bytes are copied
    file to file in ``chunk`` pieces, so a multi-GB UNet never sits in memory (onnx.load + save would hold
    all of it, twice while serializing). The files ``src`` referred to are deleted (``src`` too, unless it
    is ``dst``)."""
    import shutil

    import onnx
    from onnx.external_data_helper import _get_all_tensors

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(src), load_external_data=False)
    tensors = [t for t in _get_all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    locations = {_external_info(t)["location"] for t in tensors}
    external = sum(int(_external_info(t).get("length", 0)) or (src.parent / _external_info(t)["location"]).stat().st_size
                   for t in tensors)
    data = dst.with_name(dst.name + ".data")
    if not tensors:  # all inline already
        if src != dst:
            data.unlink(missing_ok=True)
            shutil.move(str(src), str(dst))
        return dst
    if external + model.ByteSize() <= PROTOBUF_LIMIT:  # small: inline (one file) as save_onnx would write it
        del model
        full = onnx.load(str(src), load_external_data=True)
        for t in _get_all_tensors(full):
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
        save_onnx(full, dst, external=False)
    else:
        save_streamed(model, dst, src.parent, chunk=chunk)
    for name in locations - {data.name} if src.parent == dst.parent else locations:
        (src.parent / name).unlink(missing_ok=True)
    if src != dst:
        src.unlink(missing_ok=True)
    return dst


def save_streamed(model, dst: str | Path, base_dir: str | Path, *, chunk: int = 64 << 20,
                  recode: dict | None = None) -> Path:
    """Save ``model`` as ``dst`` + one ``<dst>.data``: tensors stored outside the model (paths relative to
    ``base_dir``) are copied file to file in ``chunk`` pieces, tensors held in memory (>= 1 KB) are written
    and dropped from the proto. Nothing but the graph and the in-memory tensors is ever in RAM.
    ``recode``: tensor name -> function of its stored bytes giving the bytes to write (read whole, one
    tensor at a time: fp16 conversion)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    dst, base_dir = Path(dst), Path(base_dir)
    data = dst.with_name(dst.name + ".data")
    partial = dst.with_name(dst.name + ".data.partial")
    handles: dict[str, object] = {}
    with open(partial, "wb") as out:
        try:
            for t in _get_all_tensors(model):
                if t.data_location == onnx.TensorProto.EXTERNAL:
                    info = _external_info(t)
                    f = handles.get(info["location"])
                    if f is None:
                        f = handles[info["location"]] = open(base_dir / info["location"], "rb")
                    f.seek(int(info.get("offset", 0)))
                    left = int(info["length"]) if "length" in info else -1
                    offset = out.tell()
                    if recode and t.name in recode:
                        out.write(recode[t.name](f.read(left) if left >= 0 else f.read()))
                        left = 0
                    while left != 0:
                        piece = f.read(chunk if left < 0 else min(chunk, left))
                        if not piece:
                            break
                        out.write(piece)
                        left = left - len(piece) if left > 0 else left
                    length = out.tell() - offset
                    t.ClearField("raw_data")
                elif t.HasField("raw_data") and len(t.raw_data) >= 1024:
                    offset = out.tell()
                    out.write(t.raw_data)
                    length = len(t.raw_data)
                    t.ClearField("raw_data")
                else:
                    continue
                del t.external_data[:]
                for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(length))):
                    entry = t.external_data.add()
                    entry.key, entry.value = key, value
                t.data_location = onnx.TensorProto.EXTERNAL
        finally:
            for f in handles.values():
                f.close()
    onnx.save_model(model, str(dst))
    os.replace(partial, data)
    return dst
