"""Which onnxruntime execution providers (EPs) are installed here, and how to attach them.

Built-in EPs come from ``onnxruntime.get_available_providers()``. ``openvino`` is not onnxruntime's
OpenVINO EP (PyPI's onnxruntime does not ship it) but the OpenVINO runtime itself (the ``openvino``
package, edge/ov_session.py), listed here when it is installed. Plugin EPs ship as separate
packages and are registered with ``onnxruntime.register_execution_provider_library`` on first use
(once per process): today ``onnxruntime-qnn`` (Qualcomm QNN; on x86-64 its HTP backend is a
simulator of the Hexagon NPU, on Snapdragon it is the NPU itself).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

log = logging.getLogger("edge.devices")

# device name (settings / CLI) -> onnxruntime provider name
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
}
NPU_ORDER = ("qnn",)   # which installed EP `--device npu` means, first found wins
QNN_DEFAULT_OPTIONS = {
    "backend_type": "htp",
    # soc_model 60 (a Snapdragon 8 Gen 3 class HTP): with the simulator's default, graph finalisation of
    # MobileSAM's two-way transformer fails with QNN_COMMON_ERROR_MEM_ALLOC (measured here).
    "soc_model": "60",
    # graph-input Quantize and graph-output Dequantize run on the NPU too (default: offloaded to CPU),
    # so a fully supported QDQ graph places every node on the NPU.
    "offload_graph_io_quantization": "0",
}


@dataclass
class EpInfo:
    """One execution provider that can be used here."""

    device: str                     # our name: cpu | qnn | openvino | coreml | nnapi
    provider: str                   # onnxruntime's name ("OpenVINO runtime" for openvino)
    kind: str                       # cpu | npu | gpu | accelerator
    version: str = ""
    source: str = "built-in"        # built-in | plugin package name
    detail: str = ""
    ep_devices: list = field(default_factory=list, repr=False)   # OrtEpDevice handles (plugin EPs)


_lock = threading.Lock()
_registered: dict[str, EpInfo] = {}
_plugin_errors: dict[str, str] = {}
_plugins_tried = False


def _register_qnn() -> None:
    """Register onnxruntime-qnn's plugin library (if the package is installed)."""
    import onnxruntime as ort

    try:
        import onnxruntime_qnn
    except ImportError:
        _plugin_errors["qnn"] = "onnxruntime-qnn is not installed (pip install 'edge-run[npu]')"
        return
    name = onnxruntime_qnn.get_ep_name()
    try:
        ort.register_execution_provider_library(name, onnxruntime_qnn.get_library_path())
    except Exception as e:  # noqa: BLE001 - already registered (another module did it) or a broken install
        if "already" not in str(e).lower():
            _plugin_errors["qnn"] = f"onnxruntime-qnn {onnxruntime_qnn.__version__} failed to register: {e}"
            return
    devices = [d for d in ort.get_ep_devices() if d.ep_name == name]
    if not devices:
        _plugin_errors["qnn"] = "onnxruntime-qnn registered but offers no device"
        return
    backend = "HTP simulator (x86-64)" if _is_x86() else "HTP"
    _registered["qnn"] = EpInfo("qnn", name, "npu", version=onnxruntime_qnn.__version__,
                                source="onnxruntime-qnn", detail=f"Qualcomm QNN {backend}", ep_devices=devices)


def _is_x86() -> bool:
    import platform

    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def register_plugins() -> None:
    """Register installed plugin EPs once per process (cheap after the first call)."""
    global _plugins_tried
    if _plugins_tried:
        return
    with _lock:
        if not _plugins_tried:
            _register_qnn()
            _plugins_tried = True


def discover() -> dict[str, EpInfo]:
    """Every usable EP here, by our device name (cpu always)."""
    import onnxruntime as ort

    register_plugins()
    out: dict[str, EpInfo] = {}
    builtin = ort.get_available_providers()
    for dev, prov in PROVIDERS.items():
        if dev in _registered:
            out[dev] = _registered[dev]
        elif prov in builtin:
            kind = {"cpu": "cpu", "coreml": "accelerator", "nnapi": "accelerator"}[dev]
            out[dev] = EpInfo(dev, prov, kind, version=ort.__version__)
    ov = _openvino()
    if ov is not None:
        out["openvino"] = ov
    return out


def _openvino() -> EpInfo | None:
    """The OpenVINO runtime (CPU) when the ``openvino`` package is installed (not imported here)."""
    from edge import ov_session

    v = ov_session.version()
    if v is None:
        _plugin_errors["openvino"] = ov_session.missing_reason()
        return None
    _plugin_errors.pop("openvino", None)
    hint = ov_session.precision_hint_text()
    return EpInfo("openvino", "OpenVINO runtime", "cpu", version=v, source="openvino",
                  detail=f"reads the .onnx exports and int8-ov IR; precision {hint}")


def plugin_errors() -> dict[str, str]:
    """Why a known plugin EP (or the OpenVINO runtime) is not available (device -> reason)."""
    register_plugins()
    _openvino()
    return dict(_plugin_errors)


def npu_device() -> EpInfo | None:
    """The EP `--device npu` resolves to here, or None."""
    eps = discover()
    for dev in NPU_ORDER:
        if dev in eps:
            return eps[dev]
    return None


def present_names() -> list[str]:
    names = list(discover())
    if npu_device() is not None:
        names.insert(1, "npu")
    return names
