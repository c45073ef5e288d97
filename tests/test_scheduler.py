"""Policy tests of the shared scheduler with fake engines whose steps take scripted times."""

from __future__ import annotations

import os
import threading
import time

import pytest

from edge.errors import Busy, Cancelled, OutOfMemory
from edge.jobs import JobSpec, Priority, Step
from edge.scheduler import Scheduler

MB = 1 << 20


class FakeEngine:
    def __init__(self, mid: str, log: list, slots: int = 1):
        self.mid, self.log, self.slots = mid, log, slots
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.log.append(("close", self.mid))


def steps(name: str, n: int, dt: float, log: list):
    def work(engine):
        for i in range(n):
            time.sleep(dt)
            log.append((name, i))
            yield Step("fake", index=i + 1, total=n)
        return name
    return work


def make(log: list, sizes: dict[str, int] | None = None, budget: int = 1000 * MB, **kw) -> Scheduler:
    sizes = sizes or {}
    engines: dict[str, FakeEngine] = {}

    def loader(mid: str, threads: int):
        log.append(("load", mid))
        engines[mid] = FakeEngine(mid, log)
        return engines[mid]

    return Scheduler(loader=loader, estimate=lambda mid: sizes.get(mid, 10 * MB), threads=2, ram_budget=budget,
                     **kw)


def names(log, prefix):
    return [e for e in log if e[0].startswith(prefix)]


def test_priority_policy_runs_interactive_steps_before_waiting_batch_steps():
    log: list = []
    s = make(log, policy="priority")
    try:
        batch = s.submit(JobSpec("m", steps("batch", 20, 0.01, log), priority=Priority.BATCH))
        while not names(log, "batch"):
            time.sleep(0.001)
        chat = s.submit(JobSpec("m2", steps("chat", 5, 0.01, log), priority=Priority.INTERACTIVE))
        assert chat.result(5) == "chat" and batch.result(5) == "batch"
        work = [e[0] for e in log if e[0] in ("batch", "chat")]
        first_chat, last_chat = work.index("chat"), len(work) - 1 - work[::-1].index("chat")
        # once the chat job is loaded and running, no batch step runs until it is done
        assert "batch" not in work[first_chat:last_chat + 1]
        assert work.count("batch") == 20
    finally:
        s.close()


def test_priority_policy_aging_keeps_batch_work_moving_under_constant_interactive_load():
    log: list = []
    s = make(log, aging=0.05, policy="priority")
    try:
        batch = s.submit(JobSpec("img", steps("batch", 100, 0.002, log), priority=Priority.BATCH))
        chats = [s.submit(JobSpec("chat", steps(f"chat{i}", 60, 0.005, log))) for i in range(1)]
        for c in chats:
            c.result(10)
        done_at = max(i for i, e in enumerate(log) if e[0].startswith("chat"))
        batch_during = sum(1 for e in log[:done_at] if e[0] == "batch")
        assert batch_during >= 3, f"batch starved: {batch_during} steps while the chat ran"
        batch.result(10)
    finally:
        s.close()


def test_lru_eviction_order_and_budget():
    log: list = []
    s = make(log, sizes={"a": 100 * MB, "b": 100 * MB, "c": 100 * MB, "d": 100 * MB}, budget=300 * MB)
    try:
        for mid in ("a", "b", "c"):
            s.submit(JobSpec(mid, steps(mid, 1, 0, log))).result(5)
        s.submit(JobSpec("a", steps("a", 1, 0, log))).result(5)  # a is now the most recently used
        s.submit(JobSpec("d", steps("d", 1, 0, log))).result(5)
        time.sleep(0.05)
        assert ("close", "b") in log and ("close", "a") not in log and ("close", "c") not in log
        assert {m["id"] for m in s.loaded()} == {"a", "c", "d"}
        assert s.ram_used() <= 300 * MB + 20 * MB  # measured RSS delta may add a little noise
        assert s.metrics.evictions == 1
    finally:
        s.close()


def test_busy_model_is_never_evicted_the_new_job_waits():
    log: list = []
    s = make(log, sizes={"a": 200 * MB, "b": 200 * MB}, budget=300 * MB)
    try:
        long_a = s.submit(JobSpec("a", steps("a", 30, 0.01, log)))
        while not names(log, "a"):
            time.sleep(0.001)
        b = s.submit(JobSpec("b", steps("b", 1, 0, log)))
        time.sleep(0.1)
        assert ("close", "a") not in log and ("load", "b") not in log, "a busy model was evicted"
        long_a.result(5)
        b.result(5)
        i_close_a, i_load_b = log.index(("close", "a")), log.index(("load", "b"))
        assert log.index(("a", 29)) < i_close_a < i_load_b or log.index(("a", 29)) < i_load_b
    finally:
        s.close()


def test_model_larger_than_budget_fails_at_once_with_the_numbers():
    s = make([], sizes={"huge": 5000 * MB}, budget=300 * MB)
    try:
        h = s.submit(JobSpec("huge", steps("x", 1, 0, [])))
        with pytest.raises(OutOfMemory, match=r"5000 MiB.*300 MiB.*EDGE_RAM_BUDGET"):
            h.result(5)
    finally:
        s.close()


def test_full_queue_refuses_at_once_with_busy_and_retry_after():
    log: list = []
    s = make(log, max_queue=2)
    try:
        running = s.submit(JobSpec("m", steps("long", 50, 0.01, log)))
        while not names(log, "long"):
            time.sleep(0.001)
        queued = [s.submit(JobSpec("m", steps("q", 1, 0, log))) for _ in range(2)]
        t0 = time.monotonic()
        with pytest.raises(Busy) as err:
            s.submit(JobSpec("m", steps("q", 1, 0, log)))
        assert time.monotonic() - t0 < 0.05
        assert err.value.retry_after >= 1 and err.value.http_status == 503
        running.cancel()
        for q in queued:
            q.result(5)
    finally:
        s.close()


def test_cancellation_takes_effect_within_one_step():
    log: list = []
    s = make(log)
    try:
        h = s.submit(JobSpec("m", steps("job", 1000, 0.02, log)))
        while len(names(log, "job")) < 3:
            time.sleep(0.001)
        n_at_cancel = len(names(log, "job"))
        t0 = time.monotonic()
        h.cancel()
        with pytest.raises(Cancelled):
            h.result(5)
        assert time.monotonic() - t0 < 0.02 * 2 + 0.05
        assert len(names(log, "job")) - n_at_cancel <= 1
        assert h.state == "cancelled"
    finally:
        s.close()


def test_cancel_before_start_and_generator_cleanup_runs():
    log: list = []
    cleaned = threading.Event()

    def work(engine):
        try:
            while True:
                time.sleep(0.005)
                yield Step("fake")
        finally:
            cleaned.set()

    s = make(log)
    try:
        blocker = s.submit(JobSpec("m", work))
        next(blocker.events(timeout=5))  # it is running
        waiting = s.submit(JobSpec("m", steps("never", 1, 0, log)))
        waiting.cancel()
        with pytest.raises(Cancelled):
            waiting.result(2)
        blocker.cancel()
        with pytest.raises(Cancelled):
            blocker.result(2)
        assert cleaned.wait(2), "the engine's finally-block did not run on cancel"
        assert not names(log, "never")
    finally:
        s.close()


def test_keep_alive_zero_unloads_and_pinned_models_stay():
    log: list = []
    s = make(log)
    try:
        s.submit(JobSpec("tmp", steps("t", 1, 0, log), keep_alive=0)).result(5)
        s.pin("pinned")
        s.submit(JobSpec("pinned", steps("p", 1, 0, log), keep_alive=0)).result(5)
        deadline = time.time() + 2
        while ("close", "tmp") not in log and time.time() < deadline:
            time.sleep(0.01)
        assert ("close", "tmp") in log
        assert [m["id"] for m in s.loaded()] == ["pinned"]
    finally:
        s.close()


def test_fifo_policy_runs_jobs_to_completion_in_arrival_order():
    log: list = []
    s = make(log, policy="fifo")
    try:
        a = s.submit(JobSpec("m", steps("a", 5, 0.005, log), priority=Priority.BATCH))
        b = s.submit(JobSpec("m2", steps("b", 3, 0.001, log), priority=Priority.INTERACTIVE))
        a.result(5), b.result(5)
        work = [e[0] for e in log if e[0] in ("a", "b")]
        assert work == ["a"] * 5 + ["b"] * 3
    finally:
        s.close()


def test_engine_errors_fail_only_their_job():
    log: list = []

    def bad(engine):
        yield Step("fake")
        raise ValueError("boom")

    s = make(log)
    try:
        h = s.submit(JobSpec("m", bad))
        with pytest.raises(ValueError, match="boom"):
            h.result(5)
        assert s.submit(JobSpec("m", steps("ok", 1, 0, log))).result(5) == "ok"
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------- lanes
def test_lanes_run_interactive_steps_during_a_long_batch_step():
    log: list = []
    s = make(log)  # lanes is the default policy
    try:
        long_step = {}

        def one_long_step(engine):
            long_step["start"] = time.monotonic()
            time.sleep(1.5)  # one atomic batch step (a UNet step, a VAE decode)
            long_step["end"] = time.monotonic()
            yield Step("unet", index=1, total=1)
            return "image"

        batch = s.submit(JobSpec("img", one_long_step, priority=Priority.BATCH))
        while "start" not in long_step:
            time.sleep(0.001)
        chat = s.submit(JobSpec("chat", steps("chat", 5, 0.01, log), priority=Priority.INTERACTIVE))
        assert chat.result(5) == "chat"
        chat_done = time.monotonic()
        assert "end" not in long_step, "the interactive job waited for the batch step"
        assert batch.result(5) == "image"
        assert chat_done < long_step["end"]
    finally:
        s.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
def test_lanes_run_batch_steps_in_the_os_idle_class_and_interactive_ones_normally():
    from edge.cpu import thread_class

    seen: dict = {}

    def record(name):
        def work(engine):
            seen[name] = thread_class()
            yield Step("fake")
            return name
        return work

    for policy, batch_class in (("lanes", "idle"), ("priority", "normal")):
        s = make([], policy=policy)
        try:
            s.submit(JobSpec("a", record("batch"), priority=Priority.BATCH)).result(5)
            s.submit(JobSpec("b", record("chat"), priority=Priority.INTERACTIVE)).result(5)
        finally:
            s.close()
        assert seen == {"batch": batch_class, "chat": "normal"}, policy


def test_lanes_give_a_waiting_batch_job_its_share_under_constant_interactive_load():
    log: list = []
    s = make(log, batch_share=0.1)
    try:
        batch = s.submit(JobSpec("img", steps("batch", 400, 0.01, log), priority=Priority.BATCH))
        while not names(log, "batch"):
            time.sleep(0.001)
        t0 = time.monotonic()
        chat = s.submit(JobSpec("chat", steps("chat", 100, 0.025, log)))  # 2.5 s of back-to-back steps
        chat.result(20)
        busy = time.monotonic() - t0
        waits = s.metrics.share_waits
        # the first second is free; after it ~10/90 of the step time is given back
        assert 0.5 * 0.1 / 0.9 * (busy - 1.2) <= waits <= 0.1 / 0.9 * busy + 0.05, (waits, busy)
        batch.cancel()
    finally:
        s.close()


def test_adaptive_thread_count_reaches_engines_each_step():
    from edge.cpu import CpuLoad

    class Engine(FakeEngine):
        def set_threads(self, n: int) -> None:
            self.log.append(("threads", n))

    load = CpuLoad(cores=2)  # not started: the test sets the outside load it would have measured
    log: list = []
    s = Scheduler(loader=lambda mid, threads: Engine(mid, log), estimate=lambda mid: MB, threads=2,
                  ram_budget=100 * MB, cpu_load=load)
    try:
        gate = threading.Event()

        def work(engine):
            yield Step("token")
            gate.wait(5)
            yield Step("token")
            return "ok"

        h = s.submit(JobSpec("chat", work))
        while not h.steps:
            time.sleep(0.001)
        load.outside = 1.0  # another program now keeps one of the two cores busy
        gate.set()
        h.result(5)
        # step 2 began (with 2 threads) before the load changed; the step after it gets 1
        assert [n for kind, n in log if kind == "threads"] == [2, 2, 1]
        assert s.metrics.thread_changes == 1
    finally:
        s.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
def test_lanes_load_models_from_a_normal_thread_even_for_batch_jobs():
    """A load thread inherits the class of the thread that starts it, and every session the model opens
    inherits the load thread's: a load started by the idle-class batch worker left the SAM decoder's
    onnxruntime pool in the idle class (clicks 2x slower while an image rendered, in some processes)."""
    from edge.cpu import thread_class

    classes: list[str] = []
    for i in range(20):  # the race it guards against was decided anew at every start
        s = Scheduler(loader=lambda mid, threads: (classes.append(thread_class()), FakeEngine(mid, []))[1],
                      estimate=lambda mid: MB, threads=2, ram_budget=100 * MB)
        try:
            s.submit(JobSpec(f"m{i}", steps("batch", 1, 0.0, []), priority=Priority.BATCH)).result(5)
        finally:
            s.close()
    assert classes == ["normal"] * 20


def test_a_jobs_working_set_is_made_room_for_before_it_starts():
    log: list = []
    s = make(log, sizes={"a": 100 * MB, "b": 100 * MB}, budget=300 * MB)
    try:
        s.submit(JobSpec("a", steps("a", 1, 0, log))).result(5)
        # b's job needs 150 MB beside b's 100 MB: the idle a must go first
        s.submit(JobSpec("b", steps("b", 1, 0, log), work_bytes=150 * MB)).result(5)
        assert ("close", "a") in log or s.metrics.evicted[-1][0] == "a"
        assert {m["id"] for m in s.loaded()} == {"b"} and s.ram_used() >= 250 * MB
        # a working set that cannot fit even alone fails at once, naming the job and the numbers
        h = s.submit(JobSpec("b", steps("b2", 1, 0, log), work_bytes=400 * MB, label="image"))
        with pytest.raises(OutOfMemory, match=r"the image job on model 'b' needs 400 MiB of working memory.*RAM budget "
                                              r"is 300 MiB.*EDGE_RAM_BUDGET.*smaller precision.*--profile"):
            h.result(5)
        assert ("b2", 0) not in log
    finally:
        s.close()


def test_a_job_whose_working_set_is_held_by_a_running_job_waits_for_it():
    log: list = []
    s = make(log, sizes={"a": 100 * MB, "b": 100 * MB}, budget=300 * MB)
    try:
        long_a = s.submit(JobSpec("a", steps("a", 20, 0.01, log)))
        while not names(log, "a"):
            time.sleep(0.001)
        big_b = s.submit(JobSpec("b", steps("b", 1, 0, log), work_bytes=150 * MB))
        assert big_b.result(5) == "b" and long_a.done
        assert log.index(("a", 19)) < log.index(("b", 0))
    finally:
        s.close()
