"""Execution-provider choice for onnxruntime sessions, with CPU fallback, and the thread budget.

``make_session(path, threads=..., device=...)`` is the one place ONNX sessions are created.

Devices (``--device``, ``EDGE_DEVICE``, ``Runtime(device=...)``):
  cpu        onnxruntime's CPU EP
  auto       the NPU for NPU artifacts when an NPU EP is installed, falling back to the CPU for nodes
             (or whole graphs) it cannot run; the OpenVINO runtime for an OpenVINO IR (.xml, the int8-ov
             precision: nothing else reads it); for float (fp32 / fp16) graphs where OpenVINO's CPU plugin
             computes in bf16 (AVX-512 BF16 / AMX) the OpenVINO runtime (``cpu_backend``: the engines ask it
             per model and component, `edge-run devices` shows its pick and why); onnxruntime's CPU EP
             otherwise. Placement is logged and kept.
  npu | qnn  strict: the NPU must run the whole graph (CPU fallback disabled); otherwise a DeviceError
             naming the operators it cannot run. Components an NPU artifact declares as CPU parts (a
             small tail, an img2img encoder) still run on the CPU.
  openvino   the OpenVINO runtime (the ``openvino`` package, not onnxruntime's OpenVINO EP) on the CPU,
             reading the .onnx (or .xml IR) directly: edge/ov_session.py. Compiled models of files in a
             store are cached in ``<home>/cache/openvino``; EDGE_OV_PRECISION = f32|bf16|f16|auto sets its inference
             precision (auto: bf16 where the CPU has it, f32 otherwise).
  coreml | nnapi   that built-in EP, with CPU fallback, when this onnxruntime build has it

NPU sessions (edge.npu): the graph is compiled first in a child process (a compiler crash cannot take
the process down), the compiled EP-context model is cached in ``$EDGE_HOME/cache/npu`` keyed by model
hash + EP version + options, and loaded from there; a stale or corrupted entry is rebuilt.
Environment knobs: EDGE_NPU_COMPILE_TIMEOUT (seconds, default 3600), EDGE_NPU_OPTIONS (JSON object of
extra QNN provider options), EDGE_NPU_CACHE (cache folder).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import DeviceError

log = logging.getLogger("edge.devices")
NPU_NAMES = ("npu", "qnn")
_placements: dict[str, dict] = {}
_placements_lock = threading.Lock()
_compile_locks: dict[str, threading.Lock] = {}


# onnxruntime's CPU EP rewrites every float16 weight feeding an operator it has no float16 kernel for (on x86:
# Conv, MatMul, Add ...) into a float32 copy at load: the fp16 SD1.5-size UNet (1.7 GB) then peaked at 6.2 GB
# while loading and held 4.1 GB, no less than fp32. Without it the weights stay float16 and the Casts onnxruntime
# inserts run per call: 3.8 GB peak over a run at 256 px (measured), the same outputs within float16 rounding.
# The memory pattern is off: it plans one block from the first run and allocates it from the second on top of the
# arena's; with those Casts that took the fp16 UNet from 3.8 to 5.6 GB by its second run. The fp32 UNet measured
# the same with or without it (3.6 GB, 12 s a run at 256 px).
KEEP_FP16_WEIGHTS = "FuseFp16InitializerToFp32NodeTransformer"


def session_options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("optimization.disable_specified_optimizers", KEEP_FP16_WEIGHTS)
    so.enable_mem_pattern = False
    return so


def make_session(path: str | Path, *, threads: int, device: str = "auto", batch: bool = False,
                 keep_f32: bool = False):
    """An onnxruntime session (or an adapter with the same ``run``/``get_inputs``/``get_outputs``) for
    ``path`` on ``device``. Raises DeviceError (naming what is present / what the NPU cannot run)
    when ``device`` cannot be honoured.

    ``batch``: the graph runs in the scheduler's batch lane, so its intra-op threads are created in the
    OS idle class (edge/cpu.py; a no-op outside a lanes scheduler). ``keep_f32``: the graph's outputs are cut
    at a threshold (SAM's mask logits), so OpenVINO computes it in f32 where its default is bf16."""
    if batch:
        from edge import cpu

        return cpu.in_batch_class(lambda: make_session(path, threads=threads, device=device, keep_f32=keep_f32))
    from edge.npu import artifact, eps

    # 1. check the request against what is installed
    path = Path(path)
    device = (device or "auto").strip().lower()
    if path.suffix == ".xml" or device == "openvino":
        return _openvino(path, threads, device, keep_f32)
    present = eps.present_names()
    if device not in ("auto", "cpu", *NPU_NAMES) and device not in present:
        raise DeviceError(f"`device` {device!r} is not available here; present: {', '.join(present)}"
                          f"{_why_missing(device)}. Use --device auto or one of those.", param="device")
    if device in NPU_NAMES and eps.npu_device() is None:
        raise DeviceError(f"`device` {device!r}: no NPU execution provider is installed; present: "
                          f"{', '.join(present)}{_why_missing('qnn')}. Use --device auto or cpu.", param="device")

    # 2. what the artifact says about this file
    comp = artifact.component_for(path)
    if device in NPU_NAMES and comp is None:
        raise DeviceError(f"`device` {device!r}: {path.name} is not an NPU artifact (it needs a QDQ graph with static "
                          f"shapes). Convert the export with `edge-run export npu {path.parent} --out <folder>`, "
                          "or use --device auto / cpu.", param="device")

    # 3. open it
    if comp is not None and comp.get("adapter") == "sam_low_res_decoder":
        from edge.npu.adapters import SamLowResDecoder

        head_path = Path(comp["_root"]) / comp["head"]
        head = _open(head_path, artifact.component_for(head_path), threads, device, {})
        return SamLowResDecoder(head, lambda n: _open(path, comp, threads, device, {"num_tokens": n}),
                                max_tokens=int(comp.get("per_call_dims", {}).get("num_tokens", 21)))
    sess = _open(path, comp, threads, device, {})
    if comp is not None and comp.get("adapter") == "static_kv_decoder":
        from edge.npu.adapters import StaticKVDecoder

        return StaticKVDecoder(sess, context=int(comp["context"]), label=path.name)
    if comp is not None:
        from edge.npu.adapters import StaticSession

        return StaticSession(sess, label=path.name, hint=comp.get("shape_hint", ""))
    return sess


def _openvino(path: Path, threads: int, device: str, keep_f32: bool = False):
    """An OpenVINO IR (only OpenVINO reads it) or ``--device openvino``: the OpenVINO runtime's session."""
    from edge import ov_session
    from edge.npu import artifact

    if path.suffix != ".xml" and artifact.component_for(path) is not None:
        raise DeviceError(f"`device` 'openvino': {path.name} belongs to an NPU artifact (graphs split and fixed for the "
                          "NPU); run the model's fp32 export on OpenVINO instead, or use --device auto / npu / cpu.",
                          param="device")
    if device not in ("auto", "openvino"):
        raise DeviceError(f"`device` {device!r}: {path.name} is an OpenVINO IR (the int8-ov precision), which only the "
                          "OpenVINO runtime reads. Use --device openvino (or auto), or load another precision.",
                          param="device")
    if ov_session.version() is None:
        why = "this model's precision is an OpenVINO IR (int8-ov); " if device == "auto" else ""
        raise DeviceError(f"`device` {device!r}: {why}{ov_session.missing_reason()}. "
                          + ("Or load another precision." if device == "auto" else "Or use --device cpu."),
                          param="device")
    # compiled models are cached for files in a store (what Runtime loads; the blob of an SD1.5 UNet is GBs): files
    # outside one (an export being verified, a bench folder) would leave blobs nothing ever loads again
    cache = cache_root(path, kind="openvino") if store_home(path) is not None else None
    sess = ov_session.open_session(path, threads=threads, cache_dir=cache, keep_f32=keep_f32)
    _record(path, {}, sess.edge_placement)
    return sess


def _why_missing(device: str) -> str:
    from edge.npu import eps

    reason = eps.plugin_errors().get(device)
    return f" ({reason})" if reason else ""


def _open(path: Path, comp: dict | None, threads: int, device: str, dims: dict[str, int]):
    """One session for ``path`` with fixed ``dims``: NPU (strict or auto) or CPU / a named EP."""
    import onnxruntime as ort

    from edge.npu import eps

    wants_npu = device in NPU_NAMES or (device == "auto" and eps.npu_device() is not None)
    fallback: str | None = None
    if comp is not None and comp.get("device", "npu") == "npu" and wants_npu:
        strict = device in NPU_NAMES
        try:
            return _npu_session(path, comp, threads, dims, strict=strict)
        except _NpuUnavailable as e:
            if strict:
                raise DeviceError(f"`device` {device!r}: {path.name} cannot run on the NPU: {e}. "
                                  "Use --device auto (CPU fallback) or cpu.", param="device") from None
            log.warning("%s: NPU unavailable (%s); running on the CPU", path.name, e)
            fallback = str(e)
    so = session_options(threads)
    for name, value in dims.items():
        so.add_free_dimension_override_by_name(name, int(value))
    providers = ["CPUExecutionProvider"]
    if device not in ("auto", "cpu", *NPU_NAMES):
        providers.insert(0, eps.PROVIDERS[device])
    sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    if comp is not None or device not in ("auto", "cpu"):
        _record(path, dims, {"device": device if len(providers) > 1 else "cpu", "providers": sess.get_providers(),
                             **({"fallback": fallback} if fallback else {})})
    sess_placement = _placement_snapshot(path, dims)
    try:
        sess.edge_placement = sess_placement
    except AttributeError:
        pass
    return sess


class _NpuUnavailable(Exception):
    """The NPU cannot take this graph (crash, unsupported operators, compile error, timeout)."""


def cache_root(model_path: str | Path | None = None, kind: str = "npu") -> Path:
    """EDGE_NPU_CACHE (kind npu); else ``<home>/cache/<kind>`` of the store holding ``model_path`` (a file
    under ``<home>/models/<id>/``, so ``Runtime(home=...)`` keeps its compiled graphs in its own home);
    else the settings' EDGE_HOME. ``kind``: npu (QNN EP-context graphs) | openvino (OpenVINO's CACHE_DIR)."""
    env = os.environ.get("EDGE_NPU_CACHE") if kind == "npu" else None
    if env:
        return Path(env)
    home = store_home(model_path) if model_path is not None else None
    if home is not None:
        return home / "cache" / kind
    try:
        from edge.config import Settings

        home = Settings.from_env().home
    except Exception:  # noqa: BLE001 - a bad EDGE_* value is reported by the front door, not here
        from edge.config import _default_home

        home = _default_home()
    return Path(home) / "cache" / kind


def store_home(model_path: str | Path) -> Path | None:
    """The home of the store holding ``model_path`` (a file under ``<home>/models/<id>/``), or None."""
    for parent in Path(model_path).resolve().parents:
        if parent.name == "models" and parent.parent != parent:
            return parent.parent
    return None


def npu_options(comp: dict | None = None) -> dict[str, str]:
    """QNN provider options: defaults, then the artifact's, then EDGE_NPU_OPTIONS (JSON object)."""
    from edge.npu import eps

    # NB: htp_graph_finalization_optimization_mode=1 compiles ~5x faster but computes wrong 16-bit
    # results (measured: GroupNorm affine + SiLU in the VAE decoder, 0.99 relative error); not used.
    opts = dict(eps.QNN_DEFAULT_OPTIONS)
    opts.update({k: str(v) for k, v in (comp or {}).get("provider_options", {}).items()})
    extra = os.environ.get("EDGE_NPU_OPTIONS", "").strip()
    if extra:
        try:
            opts.update({k: str(v) for k, v in json.loads(extra).items()})
        except (ValueError, AttributeError):
            raise DeviceError(f"EDGE_NPU_OPTIONS={extra!r} is not a JSON object; for example "
                              "EDGE_NPU_OPTIONS='{\"soc_model\": \"60\"}'.", param="EDGE_NPU_OPTIONS") from None
    return opts


def compile_timeout() -> float:
    try:
        return float(os.environ.get("EDGE_NPU_COMPILE_TIMEOUT", "3600"))
    except ValueError:
        return 3600.0


def npu_key(path: Path, comp: dict | None, dims: dict[str, int], *, strict: bool) -> tuple[str, dict]:
    import onnxruntime as ort

    from edge.npu import cache as C
    from edge.npu import eps

    info = eps.npu_device()
    opts = npu_options(comp)
    key = C.cache_key(C.model_digest(path), ep=info.provider, ep_version=info.version, ort_version=ort.__version__,
                      options=opts, strict=strict, free_dims=dims)
    return key, opts


def _npu_session(path: Path, comp: dict, threads: int, dims: dict[str, int], *, strict: bool):
    """Load the cached compiled graph, compiling it first in a child process when needed."""
    from edge.npu import cache as C
    from edge.npu import eps
    from edge.npu.probe import CTX_NAME, ProbeSpec, run_probe

    info = eps.npu_device()
    key, opts = npu_key(path, comp, dims, strict=strict)
    cache = C.ContextCache(cache_root(path))
    lock = _compile_locks.setdefault(key, threading.Lock())
    with lock:
        for attempt in (1, 2):
            # 1. a cached result (compiled graph or a recorded failure)?
            meta = cache.lookup(key)
            if meta is None:
                # 2. compile in a child process
                work = cache.new_workdir()
                log.info("%s: compiling for %s (first use; cached afterwards)", path.name, info.provider)
                res = run_probe(ProbeSpec(model=str(path), out_dir=str(work), device=info.device, provider_options=opts,
                                          strict=strict, free_dims=dims),
                                timeout=compile_timeout())
                if res.status == "timeout":
                    shutil.rmtree(work, ignore_errors=True)
                    raise _NpuUnavailable(res.message)
                if res.status != "ok":
                    for p in work.iterdir():
                        p.unlink()
                meta = cache.commit(key, work, {"model": str(path), "ep": info.provider, "ep_version": info.version,
                                                "options": opts, "strict": strict, "dims": dims,
                                                "status": res.status, "placement": res.placement,
                                                "message": res.message, "compile_s": round(res.seconds, 3),
                                                "sdk_version": res.sdk_version})
            if meta["status"] != "ok":
                raise _NpuUnavailable(_failure_text(meta))
            # 3. load the compiled EP-context model
            try:
                sess = _load_ctx(Path(meta["dir"]) / CTX_NAME, opts, threads, strict=strict)
            except Exception as e:  # noqa: BLE001 - a stale/corrupt cache entry: rebuild it once
                log.warning("%s: cached NPU graph failed to load (%s); recompiling", path.name, str(e)[:200])
                cache.remove(key)
                if attempt == 2:
                    raise _NpuUnavailable(f"the compiled graph does not load: {str(e)[:200]}") from None
                continue
            placement = {"device": "npu", "ep": info.provider, **meta["placement"], "cache": meta["dir"],
                         "compile_s": meta.get("compile_s")}
            _record(path, dims, placement)
            if placement.get("cpu"):
                log.warning("%s: %d nodes on the NPU, %d on the CPU (%s)", path.name, placement["npu"],
                            placement["cpu"], ", ".join(f"{k} x{v}" for k, v in placement["cpu_ops"].items()))
            else:
                log.info("%s: all %d nodes on the NPU", path.name, placement.get("npu", 0))
            try:
                sess.edge_placement = placement
            except AttributeError:
                pass
            return sess
    raise _NpuUnavailable("unreachable")


def _failure_text(meta: dict) -> str:
    status = meta.get("status")
    if status == "unsupported":
        ops = meta.get("placement", {}).get("cpu_ops", {})
        qdq = sum(n for op, n in ops.items() if op in ("QuantizeLinear", "DequantizeLinear"))
        real = {op: n for op, n in ops.items() if op not in ("QuantizeLinear", "DequantizeLinear")} or ops
        return ("the NPU does not support " + ", ".join(f"{op} x{n}" for op, n in real.items())
                + (f" (plus {qdq} Quantize/Dequantize nodes around them)" if qdq and real is not ops else ""))
    if status == "crashed":
        return meta.get("message") or "the NPU compiler crashed"
    return f"NPU compile failed: {meta.get('message', status)}"


def _load_ctx(ctx: Path, opts: dict[str, str], threads: int, *, strict: bool):
    import onnxruntime as ort

    from edge.npu import eps

    info = eps.npu_device()
    so = session_options(threads)
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1" if strict else "0")
    so.add_provider_for_devices(info.ep_devices, opts)
    return ort.InferenceSession(str(ctx), sess_options=so)


def _record(path: Path, dims: dict[str, int], placement: dict) -> None:
    key = str(path) + ("" if not dims else " " + json.dumps(dims, sort_keys=True))
    with _placements_lock:
        _placements[key] = placement


def _placement_snapshot(path: Path, dims: dict[str, int]) -> dict:
    key = str(path) + ("" if not dims else " " + json.dumps(dims, sort_keys=True))
    with _placements_lock:
        return dict(_placements.get(key, {"device": "cpu"}))


def placements() -> dict[str, dict]:
    """Where the sessions made in this process run: file (+ fixed dims) -> placement."""
    with _placements_lock:
        return {k: dict(v) for k, v in _placements.items()}


def plan(path: str | Path, device: str = "auto", *, keep_f32: bool = False) -> dict[str, Any]:
    """What ``make_session(path, device=device, keep_f32=keep_f32)`` would do, without compiling anything: the
    device, and for NPU components whether a compiled graph (or a recorded failure) is cached."""
    from edge.npu import artifact, cache as C, eps

    path = Path(path)
    if path.suffix == ".xml" or device == "openvino":
        return _openvino_plan(path, device, keep_f32)
    comp = artifact.component_for(path)
    npu = eps.npu_device()
    if comp is None:
        why = "not an NPU artifact"
        if device in NPU_NAMES:
            return {"device": "error", "why": f"{why}; --device {device} refuses it"}
        return {"device": "cpu" if device in ("auto", "cpu", *NPU_NAMES) else device, "why": why}
    if comp.get("device", "npu") == "cpu":
        return {"device": "cpu", "why": "a CPU component of this NPU artifact"}
    if device == "cpu":
        return {"device": "cpu", "why": "--device cpu"}
    if npu is None:
        if device in NPU_NAMES:
            return {"device": "error", "why": "no NPU execution provider installed"}
        return {"device": "cpu", "why": "no NPU execution provider installed"}
    if device not in ("auto", *NPU_NAMES):
        return {"device": device, "why": "named execution provider"}
    strict = device in NPU_NAMES
    if comp.get("adapter") == "sam_low_res_decoder":
        return {"device": npu.device, "why": "compiled per number of prompt points on first use", "strict": strict}
    key, _ = npu_key(path, comp, {}, strict=strict)
    meta = C.ContextCache(cache_root(path)).lookup(key)
    if meta is None:
        return {"device": npu.device, "why": "compiles on first load (then cached)", "strict": strict}
    if meta["status"] != "ok":
        return {"device": "error" if strict else "cpu", "why": _failure_text(meta) + " (cached)", "strict": strict}
    pl = meta.get("placement", {})
    return {"device": npu.device, "strict": strict, "npu_nodes": pl.get("npu"), "cpu_nodes": pl.get("cpu"),
            "why": f"cached compiled graph: {pl.get('npu')} nodes on the NPU, {pl.get('cpu')} on the CPU"}


def _openvino_plan(path: Path, device: str, keep_f32: bool = False) -> dict[str, Any]:
    from edge import ov_session

    ir = path.suffix == ".xml"
    if ov_session.version() is None:
        return {"device": "error", "why": ("an OpenVINO IR (int8-ov); " if ir else "") + ov_session.missing_reason()}
    if ir and device not in ("auto", "openvino"):
        return {"device": "error", "why": f"an OpenVINO IR (int8-ov): only OpenVINO reads it; --device {device} refuses it"}
    why = ("an OpenVINO IR (int8-ov): only the OpenVINO runtime reads it" if ir and device == "auto"
           else "--device openvino: the OpenVINO runtime reads the file directly")
    cached = (f"compiled on first load, then from {cache_root(path, kind='openvino')}" if store_home(path) is not None
              else "compiled at each load (not in a store: not cached)")
    try:
        precision = ov_session.effective_precision_text(keep_f32=keep_f32)
    except DeviceError as e:  # a bad EDGE_OV_PRECISION: the load would refuse it
        return {"device": "error", "why": e.message}
    return {"device": "openvino", "why": f"{why}; precision {precision}; {cached}"}


# Precisions whose graphs are float (OpenVINO computes them in bf16 where the CPU has it); int8 / Winograd / QDQ graphs
# keep onnxruntime's int8 kernels, and the int8-ov IR only OpenVINO reads.
FLOAT_PRECISIONS = ("fp32", "fp16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of the CPUs OpenVINO computes bf16 on by default


@dataclass(frozen=True)
class Backend:
    """The device a plain (not NPU) ONNX graph runs on, and why: what ``auto`` picks for the CPU it finds."""

    device: str  # "auto" (onnxruntime's CPU EP; NPU artifacts still go to the NPU) | "openvino" | what was asked
    why: str


def cpu_backend(device: str, precision: str | None, *, click: bool = False) -> Backend:
    """The fastest installed CPU backend for a graph of ``precision`` when ``device`` is auto (any other device is
    kept as asked). OpenVINO for float graphs where its CPU plugin computes in bf16 (AVX-512 BF16 / AMX): the
    512x512 UNet step took 2.20 s there against onnxruntime's 4.33 (fp32) and 3.73 (int8-winograd), same run
    (issue 21's table). Without bf16, OpenVINO's f32 UNet step (12.02 s) lost to onnxruntime's Winograd
    precision (10.30 s) on an AVX2 CPU and peaked at 8.7 GB against 1.7, so onnxruntime stays. ``click``: the
    SAM decoder, whose p50 onnxruntime ran in 109 ms against OpenVINO's 128 (AVX2): it stays on onnxruntime."""
    if device != "auto":
        return Backend(device, f"--device {device}")
    if precision is None:
        return Backend("auto", "onnxruntime: the graph's precision is unknown (no manifest)")
    if precision not in FLOAT_PRECISIONS:
        return Backend("auto", f"{precision} graph: onnxruntime's int8 kernels")
    if click:
        return Backend("auto", "a click's decoder: onnxruntime answers it fastest")
    from edge import ov_session
    from edge.config import device_facts

    if ov_session.version() is None:
        return Backend("auto", "onnxruntime: OpenVINO is not installed (its bf16 is 1.7x faster on CPUs with "
                               "AVX-512 BF16 / AMX)")
    if not device_facts().flags & set(BF16_FLAGS):  # told without importing OpenVINO (the CPU-only path never does)
        return Backend("auto", "onnxruntime: no AVX-512 BF16 / AMX on this CPU, where OpenVINO computes in f32 and "
                               "onnxruntime's int8-winograd UNet was faster")
    try:
        bf16 = ov_session.precision_hint() in (None, "bf16") and ov_session.default_precision() == "bf16"
    except Exception as e:  # noqa: BLE001 - a bad EDGE_OV_PRECISION is the OpenVINO session's to report
        return Backend("auto", f"onnxruntime: OpenVINO is not usable here ({str(e)[:120]})")
    if not bf16:
        return Backend("auto", "onnxruntime: OpenVINO computes in f32 on this CPU (no AVX-512 BF16 / AMX, or "
                               f"{ov_session.PRECISION_ENV}), where onnxruntime's int8-winograd UNet was faster")
    found = " / ".join(n for f, n in zip(BF16_FLAGS, ("AVX-512 BF16", "AMX")) if f in device_facts().flags)
    return Backend("openvino", f"OpenVINO in bf16 on this CPU ({found}): 1.7-2.0x onnxruntime on the 512x512 UNet")


def prefers_openvino() -> bool:
    """Whether ``auto`` runs float graphs on OpenVINO here (installed, bf16 on this CPU)."""
    return cpu_backend("auto", "fp32").device == "openvino"


def describe(device: str = "auto") -> dict[str, Any]:
    """What is installed: EPs (name, kind, version, source) and plugins that failed to load."""
    from edge.npu import eps

    found = eps.discover()
    npu = eps.npu_device()
    if "openvino" in found:  # what its CPU plugin computes here (imports OpenVINO: this command only)
        from dataclasses import replace

        from edge import ov_session

        try:
            found["openvino"] = replace(found["openvino"], detail="reads the .onnx exports and int8-ov IR; precision "
                                                                  + ov_session.effective_precision_text())
        except Exception as e:  # noqa: BLE001 - a bad EDGE_OV_PRECISION or a broken install: say so, list the rest
            found["openvino"] = replace(found["openvino"], detail=f"not usable: {str(e)[:200]}")
    return {"requested": device, "npu": npu.device if npu else None,
            "providers": [{"device": i.device, "provider": i.provider, "kind": i.kind, "version": i.version,
                           "source": i.source, "detail": i.detail} for i in found.values()],
            "missing": eps.plugin_errors()}
