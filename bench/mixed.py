"""Mixed load: interactive chats arriving while a long batch job runs. Chat time-to-first-token
p50/p95 with edge-run's priority scheduler vs a plain FIFO scheduler (same code, policy="fifo"),
and vs the idle TTFT, in the same run.

    python bench/mixed.py [--threads 2] [--chats 12] [--batch-tokens 600]

The batch job is a long chat generation submitted at batch priority (the image engine's UNet
steps are batch work in the same way).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_home, pct, table  # noqa: E402

from edge.jobs import Priority  # noqa: E402


def ttft(rt, i: int) -> float:
    t0 = time.perf_counter()
    h = rt.chat_job([{"role": "user", "content": f"Say hello to friend number {i}."}], temperature=0, max_tokens=8)
    for step in h.events():
        if step.kind == "token" and step.data:
            t = time.perf_counter() - t0
            h.cancel()
            break
    else:
        t = time.perf_counter() - t0
    try:
        h.result(30)
    except Exception:
        pass
    return t * 1000


def scenario(home: Path, threads: int, policy: str, chats: int, batch_tokens: int, gap: float, load: bool):
    from edge.api import Runtime

    with Runtime(home=str(home), threads=threads, offline=True, chat_slots=2, keep_alive=-1, policy=policy) as rt:
        rt.chat([{"role": "user", "content": "warm up"}], max_tokens=2)
        batch = None
        if load:
            batch = rt.chat_job([{"role": "user", "content": "Write a very long story about a lighthouse keeper."}],
                                temperature=0, min_p=0, max_tokens=batch_tokens, priority=Priority.BATCH)
            next(batch.events())  # it is running
        out = []
        for i in range(chats):
            out.append(ttft(rt, i))
            time.sleep(gap)
        batch_steps = batch.steps if batch else 0
        if batch:
            batch.cancel()
        return out, batch_steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--chats", type=int, default=12)
    ap.add_argument("--batch-tokens", type=int, default=600)
    ap.add_argument("--gap", type=float, default=0.3, help="seconds between interactive chats")
    args = ap.parse_args()
    home = bench_home()

    idle, _ = scenario(home, args.threads, "priority", args.chats, args.batch_tokens, args.gap, load=False)
    prio, prio_batch = scenario(home, args.threads, "priority", args.chats, args.batch_tokens, args.gap, load=True)
    fifo, _ = scenario(home, args.threads, "fifo", min(args.chats, 3), args.batch_tokens, args.gap, load=True)
    i50, i95 = pct(idle, 0.5), pct(idle, 0.95)
    rows = [
        ["idle (no batch job)", i50, i95, 1.0, "-"],
        ["under load, edge-run priority scheduler", pct(prio, 0.5), pct(prio, 0.95), pct(prio, 0.95) / i95,
         f"{prio_batch} batch tokens meanwhile"],
        ["under load, FIFO baseline (peer)", pct(fifo, 0.5), pct(fifo, 0.95), pct(fifo, 0.95) / i95, "-"],
    ]
    print(f"threads {args.threads}; batch job: {args.batch_tokens}-token chat at batch priority; "
          f"{args.chats} interactive chats, {args.gap}s apart\n")
    print(table(["scenario", "TTFT p50 ms", "TTFT p95 ms", "p95 vs idle", "note"], rows))
    print(f"\nFIFO p95 / priority p95 = {pct(fifo, 0.95) / pct(prio, 0.95):.1f}x")


if __name__ == "__main__":
    main()
