"""The NPU compile probe: compile a model for an NPU EP in a CHILD process.

QNN's HTP compiler can crash the whole process (MobileSAM's full mask decoder segfaults inside
libQnnHtp.so at session creation, even with CPU fallback allowed). So an NPU session is first compiled
here, in a child: a crash becomes a result (``status: crashed``, the signal) for the parent to turn
into a CPU fallback (auto) or a clear error (strict), and never takes down ``edge-run serve``.

The child writes the compiled EP-context model (``model_ctx.onnx`` + the EP's binary) into
``out_dir`` and prints one JSON line: status, placement (nodes per EP and CPU op types), seconds.

    python -m edge.npu.probe '<json spec>'      # spec: see ProbeSpec
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

CTX_NAME = "model_ctx.onnx"
STRICT_FAIL = "fallback to CPU EP has been explicitly disabled"


@dataclass
class ProbeSpec:
    model: str
    out_dir: str
    device: str = "qnn"
    provider_options: dict = field(default_factory=dict)
    strict: bool = False
    free_dims: dict = field(default_factory=dict)
    run: bool = False               # also run once on zeros (slow on a simulator; off by default)
    crash_for_test: bool = False    # deliberately segfault inside the compile (tests of the crash path)


@dataclass
class ProbeResult:
    status: str                     # ok | unsupported | crashed | error | timeout
    placement: dict = field(default_factory=dict)   # {"npu": n, "cpu": n, "cpu_ops": {op: n}, "npu_ops": {...}}
    seconds: float = 0.0
    message: str = ""
    ctx_files: list = field(default_factory=list)
    sdk_version: str = ""


# -- in the child ---------------------------------------------------------------------------------

def placement_of(session) -> dict:
    """Nodes per EP from onnxruntime's graph-assignment record (exact: the original graph's nodes)."""
    npu, cpu = Counter(), Counter()
    for sub in session.get_provider_graph_assignment_info():
        target = cpu if sub.ep_name == "CPUExecutionProvider" else npu
        for n in sub.get_nodes():
            target[n.op_type] += 1
    return {"npu": sum(npu.values()), "cpu": sum(cpu.values()), "cpu_ops": dict(sorted(cpu.items())),
            "npu_ops": dict(sorted(npu.items()))}


def session_options(spec: ProbeSpec, *, strict: bool, ctx_path: str | None = None, log_level: int = 3):
    import onnxruntime as ort

    from edge.npu import eps

    info = eps.discover().get(spec.device)
    if info is None or not info.ep_devices:
        raise RuntimeError(f"execution provider {spec.device!r} is not available in this process")
    so = ort.SessionOptions()
    so.log_severity_level = log_level
    so.intra_op_num_threads = 1
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1" if strict else "0")
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    for name, value in spec.free_dims.items():
        so.add_free_dimension_override_by_name(name, int(value))
    if ctx_path:
        so.add_session_config_entry("ep.context_enable", "1")
        so.add_session_config_entry("ep.context_file_path", ctx_path)
        so.add_session_config_entry("ep.context_embed_mode", "0")
    so.add_provider_for_devices(info.ep_devices, {k: str(v) for k, v in spec.provider_options.items()})
    return so


def _zeros_feeds(session) -> dict:
    import numpy as np

    types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
             "tensor(float16)": np.float16, "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8}
    return {i.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in i.shape], types.get(i.type, np.float32))
            for i in session.get_inputs()}


def child_main(spec: ProbeSpec) -> ProbeResult:
    import onnxruntime as ort

    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = out / CTX_NAME
    t0 = time.perf_counter()
    if spec.crash_for_test:
        os.kill(os.getpid(), signal.SIGSEGV)
    try:
        sess = ort.InferenceSession(spec.model, sess_options=session_options(spec, strict=spec.strict,
                                                                             ctx_path=str(ctx)))
    except Exception as e:  # noqa: BLE001 - reported to the parent as a result
        msg = str(e)
        if spec.strict and STRICT_FAIL in msg:
            # 2. which operators? compile again with fallback allowed, only to read the placement
            loose = ort.InferenceSession(spec.model, sess_options=session_options(spec, strict=False))
            return ProbeResult("unsupported", placement_of(loose), time.perf_counter() - t0,
                               "the graph needs the CPU for some nodes")
        return ProbeResult("error", {}, time.perf_counter() - t0, msg.strip().splitlines()[-1][:500])
    placement = placement_of(sess)
    if spec.run:
        sess.run(None, _zeros_feeds(sess))
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    return ProbeResult("ok", placement, time.perf_counter() - t0, "", files, _sdk_version(ctx))


def _sdk_version(ctx: Path) -> str:
    try:
        import onnx

        m = onnx.load(str(ctx), load_external_data=False)
        for n in m.graph.node:
            if n.op_type == "EPContext":
                for a in n.attribute:
                    if a.name == "ep_sdk_version":
                        return a.s.decode()
    except Exception:  # noqa: BLE001 - informational only
        pass
    return ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = ProbeSpec(**json.loads(argv[0]))
    try:
        res = child_main(spec)
    except Exception as e:  # noqa: BLE001
        res = ProbeResult("error", message=f"{e.__class__.__name__}: {e}"[:500])
    sys.stdout.write("\nEDGE_PROBE_RESULT " + json.dumps(asdict(res)) + "\n")
    sys.stdout.flush()
    return 0


# -- in the parent --------------------------------------------------------------------------------

def run_probe(spec: ProbeSpec, *, timeout: float) -> ProbeResult:
    """Run the probe in a child process; a crash, a timeout or garbage output is a result, not an
    exception."""
    env = dict(os.environ)
    env.setdefault("PYTHONFAULTHANDLER", "0")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "edge.npu.probe", json.dumps(asdict(spec))],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return ProbeResult("timeout", seconds=time.perf_counter() - t0,
                           message=f"the NPU compile took longer than {timeout:.0f} s")
    dt = time.perf_counter() - t0
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name if -proc.returncode in signal.Signals._value2member_map_ else str(-proc.returncode)
        return ProbeResult("crashed", seconds=dt, message=f"the NPU compiler crashed ({sig}) in the probe process")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("EDGE_PROBE_RESULT "):
            data = json.loads(line.removeprefix("EDGE_PROBE_RESULT "))
            data["seconds"] = dt
            return ProbeResult(**data)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return ProbeResult("error", seconds=dt, message=f"probe exited with code {proc.returncode}: {tail[0][:300]}")


if __name__ == "__main__":
    raise SystemExit(main())
