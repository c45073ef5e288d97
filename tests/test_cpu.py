"""edge/cpu.py against the real kernel: the idle class reaches onnxruntime's and llama.cpp's own
threads, and CpuLoad sees a real spinning process and gives the core back when it stops."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge import cpu

linux_only = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="thread classes are Linux-only")


def _tids() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def _in_thread(fn, *, lanes: bool):
    """Run ``fn`` in a fresh thread that works for a lanes scheduler (or not); returns its value."""
    box = {}

    def run():
        cpu.set_lanes(lanes)
        box["v"] = fn()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return box["v"]


@pytest.fixture(scope="module")
def matmul_onnx(tmp_path_factory) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [512, 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [512, 512])], [w])
    path = tmp_path_factory.mktemp("cpu") / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


_SESSION_THREADS = """
import json, os, sys, threading
import numpy as np
sys.path.insert(0, sys.argv[4])
from test_cpu import _in_thread, _tids, cpu
from edge.devices import make_session

lanes, batch, path = sys.argv[1] == "1", sys.argv[2] == "1", sys.argv[3]
before = _tids()
sess = _in_thread(lambda: make_session(path, threads=2, device="cpu", batch=batch), lanes=lanes)
new = _tids() - before - {t.native_id for t in threading.enumerate()}
sess.run(None, {"x": np.ones((512, 512), np.float32)})
print(json.dumps({"new": sorted({cpu.thread_class(t) for t in new if os.path.exists(f"/proc/self/task/{t}")}),
                  "caller": cpu.thread_class()}))
"""


@linux_only
@pytest.mark.parametrize("lanes,batch,want", [(True, True, "idle"), (True, False, "normal"), (False, True, "normal")])
def test_batch_sessions_create_their_pool_threads_in_the_idle_class(matmul_onnx, lanes, batch, want):
    # a fresh process: in the suite's own, a thread another test left winding down (a scheduler's closer, a
    # server's, a native one past its Python end) can appear meanwhile in the normal class (CI saw it twice)
    import json

    out = subprocess.run([sys.executable, "-c", _SESSION_THREADS, str(int(lanes)), str(int(batch)), str(matmul_onnx),
                          str(Path(__file__).parent)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["new"], "onnxruntime made no intra-op thread: the test proves nothing"
    assert got["new"] == [want]
    assert got["caller"] == "normal"  # the caller's own class is untouched


@linux_only
def test_llama_cpp_threads_started_by_the_batch_worker_are_idle(chat_model_path):
    from edge.chat.engine import open_llama

    llm = open_llama(model_path=str(chat_model_path), n_ctx=256, n_threads=2, n_threads_batch=2, verbose=False)
    try:
        def lowered_eval():
            cpu.lower_this_thread()
            before = _tids()
            llm.eval(llm.tokenize(b"Hello there, how are you today?"))
            return {t: cpu.thread_class(t) for t in _tids() - before}

        classes = _in_thread(lowered_eval, lanes=True)
        assert classes, "llama.cpp started no thread: the test proves nothing"
        assert set(classes.values()) == {"idle"}
    finally:
        llm.close()


def _quiet_baseline(load) -> float:
    """The outside load once the sampler has settled; skips when other programs already keep a core
    busy (the figures below need an otherwise idle machine, as CI's is)."""
    time.sleep(1.0)
    if load.outside > 0.3:
        pytest.skip(f"other programs already keep {load.outside:.1f} cores busy: no idle baseline here")
    return load.outside


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_cpu_load_sees_a_spinning_process_and_gives_the_core_back():
    load = cpu.CpuLoad(interval=0.1).start()
    try:
        base = _quiet_baseline(load)
        assert load.threads(2) == 2, "idle machine: the full budget"
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            _wait(lambda: load.threads(2) == 1, 5, "one core taken by another process: one thread")
            # the moving average climbs to the hog's full core (the count drops as soon as it passes 0.5)
            _wait(lambda: load.outside - base >= 0.8, 5, "the hog measured as about one core")
            assert load.threads(2) == 1
            assert load.threads(1) == 1 and load.threads(8) == 1  # never more than the budget, never 0
        finally:
            hog.kill()
            hog.wait()
        _wait(lambda: load.threads(2) == 2, 5, "the hog stopped: the full budget again")
    finally:
        load.stop()


def test_cpu_load_does_not_count_this_process_as_outside_load():
    load = cpu.CpuLoad(interval=0.1).start()
    try:
        base = _quiet_baseline(load)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:  # this process spins one core itself
            pass
        assert load.outside - base < 0.4, (base, load.outside)
        assert load.threads(2) == 2
    finally:
        load.stop()


def _wait(cond, seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"not reached within {seconds} s: {what}")
