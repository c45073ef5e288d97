"""JobChain (edge/jobs.py): jobs run one after another behind one handle, each at its own priority, over
the real scheduler with fake engines."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from edge.errors import BadRequest, Busy, Cancelled
from edge.jobs import JobChain, JobSpec, Priority, Step
from edge.scheduler import Scheduler


class FakeEngine:
    slots = 1

    def close(self) -> None:
        pass


NAME = object()


def job(name: str, n: int, log: list, dt: float = 0.0, result=NAME, priority=Priority.INTERACTIVE) -> JobSpec:
    def work(engine):
        for i in range(n):
            time.sleep(dt)
            log.append((name, i))
            yield Step(name, index=i + 1, total=n)
        return name if result is NAME else result
    return JobSpec("m", work, priority=priority, label=name)


@pytest.fixture()
def sched():
    s = Scheduler(loader=lambda mid, threads: FakeEngine(), estimate=lambda mid: 1, threads=1, ram_budget=1 << 30,
                  max_queue=4)
    yield s
    s.close()


def test_each_result_picks_the_next_job(sched):
    log: list = []

    def stages():
        first = yield job("probe", 1, log, result=None)  # e.g. a decode that found no cached embedding
        assert first is None  # a miss is a value, not an error
        ran = yield job("encode", 2, log, priority=Priority.BATCH)
        decoded = yield job("decode", 1, log)
        return (ran, decoded)

    chain = JobChain(sched.submit, stages(), model_id="m")
    kinds = [s.kind for s in chain.events(timeout=10)]
    assert chain.result(timeout=10) == ("encode", "decode")
    assert kinds == ["probe", "encode", "encode", "decode"]
    assert [name for name, _ in log] == kinds and chain.done and chain.model_id == "m"
    assert sched.metrics.jobs == {"probe": 1, "encode": 1, "decode": 1}


def test_an_error_ends_the_chain_and_no_later_job_starts(sched):
    log: list = []

    def failing(engine):
        raise BadRequest("bad prompt", param="points")
        yield  # pragma: no cover

    def stages():
        yield JobSpec("m", failing, label="decode")
        yield job("never", 1, log)

    chain = JobChain(sched.submit, stages())
    with pytest.raises(BadRequest, match="bad prompt"):
        chain.result(timeout=10)
    assert log == [] and "never" not in sched.metrics.jobs


def test_an_error_raised_by_the_stages_ends_the_chain(sched):
    log: list = []

    def stages():
        yield job("probe", 1, log)
        raise BadRequest("not cached", param="image_id")

    chain = JobChain(sched.submit, stages())
    with pytest.raises(BadRequest, match="not cached"):
        chain.result(timeout=10)


def test_cancel_stops_the_running_job_and_starts_no_other(sched):
    log: list = []

    def stages():
        yield job("long", 200, log, dt=0.01)
        yield job("never", 1, log)

    chain = JobChain(sched.submit, stages())
    while not log:
        time.sleep(0.01)
    chain.cancel()
    with pytest.raises(Cancelled):
        chain.result(timeout=10)
    assert len(log) < 200 and "never" not in sched.metrics.jobs


def test_a_full_queue_refuses_the_next_job_with_busy(sched):
    log: list = []
    release = threading.Event()

    def probe(engine):
        release.wait(10)
        yield Step("probe")
        return None

    def stages():
        yield JobSpec("m", probe, label="probe")
        yield job("next", 1, log)

    chain = JobChain(sched.submit, stages())
    while not sched.running_count():
        time.sleep(0.01)
    blockers = []
    try:
        while True:  # fill the queue behind the probe (its lane is held by the probe's step)
            blockers.append(sched.submit(job("block", 100, log, dt=0.01)))
    except Busy:
        pass
    try:
        release.set()
        with pytest.raises(Busy):
            chain.result(timeout=10)
        assert "next" not in sched.metrics.jobs
    finally:
        for b in blockers:
            b.cancel()


def test_a_first_job_submitted_by_the_caller_is_followed(sched):
    log: list = []

    def stages():
        got = yield job("first", 1, log)
        assert got == "first"
        return (yield job("second", 1, log))

    gen = stages()
    chain = JobChain(sched.submit, gen, first=sched.submit(next(gen)))
    assert chain.result(timeout=10) == "second"


def test_awaited_without_a_thread_like_a_job(sched):
    """The server's wait (add_listener + take_events) works on a chain as on a single job."""
    from edge.server.jobs import job_events, wait_result

    log: list = []

    def stages():
        yield job("a", 2, log, dt=0.01)
        return (yield job("b", 1, log))

    async def main():
        chain = JobChain(sched.submit, stages())
        kinds = [s.kind async for s in job_events(chain)]
        return kinds, await wait_result(chain)

    before = threading.active_count()
    kinds, result = asyncio.run(main())
    assert kinds == ["a", "a", "b"] and result == "b"
    assert threading.active_count() <= before + 1
