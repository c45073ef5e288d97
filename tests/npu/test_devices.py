"""edge.devices on the QNN HTP (simulator on x86-64): discovery, strict vs auto fallback with placement
counts, the child-process compile probe surviving a real libQnnHtp.so crash, the EP-context cache
(faster second load, corrupted / stale entries rebuilt), and the clear errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge.errors import BadRequest, DeviceError
from tests.npu.conftest import conv_model, needs_qnn, qdq_artifact, tile5d_model

pytestmark = needs_qnn
RNG = np.random.default_rng(0)
X = RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)


def _cpu(path: Path, feeds: dict) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _feeds(n: int = 4) -> list[dict]:
    return [{"x": RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(n)]


@pytest.fixture(scope="module")
def relu_net(tmp_path_factory) -> Path:
    return qdq_artifact(tmp_path_factory.mktemp("relu"), conv_model(erf=False), _feeds())


@pytest.fixture(scope="module")
def erf_net(tmp_path_factory) -> Path:
    return qdq_artifact(tmp_path_factory.mktemp("erf"), conv_model(erf=True), _feeds())


@pytest.fixture(scope="module")
def crasher(tmp_path_factory) -> Path:
    feeds = [{"x": RNG.standard_normal((1, 16, 8, 8)).astype(np.float32)} for _ in range(2)]
    return qdq_artifact(tmp_path_factory.mktemp("crash"), tile5d_model(), feeds)


# -- discovery and bad requests --------------------------------------------------------------------

def test_discovery_registers_the_qnn_plugin_once():
    from edge.npu import eps

    found = eps.discover()
    assert {"cpu", "qnn"} <= set(found)
    assert found["qnn"].kind == "npu" and found["qnn"].source == "onnxruntime-qnn" and found["qnn"].ep_devices
    assert eps.npu_device().device == "qnn" and "npu" in eps.present_names()
    eps.register_plugins()                       # idempotent
    assert eps.discover()["qnn"].version == found["qnn"].version


def test_a_missing_device_names_what_is_present(relu_net):
    from edge.devices import make_session

    with pytest.raises(DeviceError) as e:
        make_session(relu_net, threads=1, device="coreml")  # (openvino is the OpenVINO runtime: tests/devices)
    assert "present: cpu, npu, qnn" in e.value.message and "--device" in e.value.message


def test_strict_npu_refuses_a_model_that_is_not_an_npu_artifact(tmp_path):
    import onnx

    from edge.devices import make_session

    onnx.save(conv_model(), tmp_path / "plain.onnx")
    with pytest.raises(DeviceError, match="not an NPU artifact.*edge-run export npu"):
        make_session(tmp_path / "plain.onnx", threads=1, device="npu")
    sess = make_session(tmp_path / "plain.onnx", threads=1, device="auto")   # auto: the CPU, no compile
    assert sess.get_providers() == ["CPUExecutionProvider"]


# -- strict vs auto ---------------------------------------------------------------------------------

def test_strict_names_the_unsupported_operator_auto_falls_back_per_node(erf_net, fresh_cache):
    from edge.devices import make_session

    with pytest.raises(DeviceError) as e:
        make_session(erf_net, threads=1, device="npu")
    assert "does not support" in e.value.message and "Erf x1" in e.value.message
    sess = make_session(erf_net, threads=1, device="auto")
    p = sess.placement
    assert p["device"] == "npu" and p["cpu_ops"]["Erf"] == 1 and p["npu"] > 10
    assert set(p["cpu_ops"]) <= {"Erf", "QuantizeLinear", "DequantizeLinear"}
    np.testing.assert_allclose(sess.run(None, {"x": X})[0], _cpu(erf_net, {"x": X}), atol=0.05)


def test_strict_runs_a_fully_supported_graph_entirely_on_the_npu(relu_net, fresh_cache):
    from edge.devices import make_session

    sess = make_session(relu_net, threads=1, device="npu")
    assert sess.placement["cpu"] == 0 and sess.placement["npu"] >= 10
    assert sess.get_providers()[0] == "QNNExecutionProvider"
    out, ref = sess.run(None, {"x": X})[0], _cpu(relu_net, {"x": X})
    assert np.abs(out - ref).max() <= 0.02 * np.abs(ref).max()      # HTP vs onnxruntime's own QDQ kernels
    with pytest.raises(BadRequest, match=r"compiled for the static shape \[1, 3, 32, 32\]"):
        sess.run(None, {"x": np.zeros((1, 3, 64, 64), np.float32)})


# -- the crash probe --------------------------------------------------------------------------------

def test_a_crashing_compile_is_survived(crasher, fresh_cache):
    """The 5-D Tile graph segfaults inside libQnnHtp.so: only the probe child dies."""
    from edge.devices import make_session
    from edge.npu.cache import ContextCache

    with pytest.raises(DeviceError) as e:
        make_session(crasher, threads=1, device="npu")
    assert "crashed (SIGSEGV)" in e.value.message and "--device auto" in e.value.message
    x = RNG.standard_normal((1, 16, 8, 8)).astype(np.float32)
    sess = make_session(crasher, threads=1, device="auto")        # falls back to the CPU, same numbers
    assert sess.placement["device"] == "cpu" and "crashed" in sess.placement["fallback"]
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], _cpu(crasher, {"x": x}))
    statuses = sorted(m["status"] for m in ContextCache(fresh_cache).entries())
    assert statuses == ["crashed", "crashed"]                      # strict and auto keys, both recorded
    t0 = time.perf_counter()
    with pytest.raises(DeviceError, match="crashed"):
        make_session(crasher, threads=1, device="npu")               # cached: no second child, no crash
    assert time.perf_counter() - t0 < 2.0


# -- the EP-context cache ---------------------------------------------------------------------------

def test_second_load_comes_from_the_ep_context_cache_and_is_faster(relu_net, fresh_cache):
    from edge.devices import make_session

    t0 = time.perf_counter()
    cold = make_session(relu_net, threads=1, device="npu")
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = make_session(relu_net, threads=1, device="npu")
    t_warm = time.perf_counter() - t0
    assert t_warm < t_cold / 3, (t_cold, t_warm)
    assert warm.placement == cold.placement
    np.testing.assert_array_equal(warm.run(None, {"x": X})[0], cold.run(None, {"x": X})[0])
    entry = Path(warm.placement["cache"])
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["status"] == "ok" and meta["ep_version"] and set(meta["files"]) >= {"model_ctx.onnx"}


def test_corrupted_or_stale_cache_entries_are_rebuilt(relu_net, fresh_cache, monkeypatch):
    from edge.devices import make_session

    first = make_session(relu_net, threads=1, device="npu")
    entry = Path(first.placement["cache"])
    binary = next(p for p in entry.iterdir() if p.suffix == ".bin")
    good = binary.read_bytes()
    binary.write_bytes(good[: len(good) // 3])                      # truncated compiled graph
    again = make_session(relu_net, threads=1, device="npu")
    assert binary.read_bytes() == good                              # recompiled into the same key
    np.testing.assert_array_equal(again.run(None, {"x": X})[0], first.run(None, {"x": X})[0])
    (entry / "meta.json").write_text("{not json")                   # broken record
    assert make_session(relu_net, threads=1, device="npu").placement["cpu"] == 0
    monkeypatch.setenv("EDGE_NPU_OPTIONS", json.dumps({"htp_performance_mode": "burst"}))   # other options
    other = make_session(relu_net, threads=1, device="npu")
    assert Path(other.placement["cache"]) != entry and len([d for d in fresh_cache.iterdir()
                                                            if not d.name.startswith(".")]) == 2
    monkeypatch.setenv("EDGE_NPU_OPTIONS", "not json")
    with pytest.raises(DeviceError, match="EDGE_NPU_OPTIONS"):
        make_session(relu_net, threads=1, device="npu")


def test_devices_command_lists_providers_and_what_models_would_use(npu_home, capsys, monkeypatch):
    from edge.cli import main

    code = main(["devices", "--json", "--home", str(npu_home), "--device", "npu"])
    info = json.loads(capsys.readouterr().out)
    assert code == 0 and info["npu"] == "qnn"
    assert {p["device"] for p in info["providers"]} >= {"cpu", "qnn"}
    rows = {(r["model"], r["component"]): r for r in info["models"]}
    assert rows[("mobilesam-tiny-npu", "decoder_head.onnx")]["device"] == "cpu"
    assert rows[("mobilesam-tiny-npu", "encoder.onnx")]["device"] in ("qnn", "error")
    assert all(r["device"] in ("qnn", "cpu") for k, r in rows.items() if k[0] == "lcm-tiny-npu")
    assert main(["devices", "--home", str(npu_home)]) == 0
    text = capsys.readouterr().out
    assert "QNNExecutionProvider" in text and "HTP" in text and "mobilesam-tiny-npu" in text


def test_compiled_graphs_live_in_the_home_of_the_store_that_holds_the_model(relu_net, tmp_path, monkeypatch):
    import shutil

    from edge.devices import make_session

    monkeypatch.delenv("EDGE_NPU_CACHE", raising=False)
    model_dir = tmp_path / "home" / "models" / "relu-net"
    shutil.copytree(relu_net.parent, model_dir)
    sess = make_session(model_dir / "model.onnx", threads=1, device="npu")
    assert Path(sess.placement["cache"]).parent == tmp_path / "home" / "cache" / "npu"
