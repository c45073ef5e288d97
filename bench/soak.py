"""Soak: N concurrent mixed clients against a real `edge-run serve` on 127.0.0.1 for a fixed time.

    python bench/soak.py                      # 200 clients, 10 minutes, tiny LCM + MobileSAM + SmolLM2
    python bench/soak.py --clients 50 --seconds 60 --home /path/to/EDGE_HOME

Every client loops until the deadline (bounded: no request outlives it by more than its timeout) over
streamed and plain chats, chats it cancels or disconnects from, clicks on cached and new images, small
image generations, and health/model polls. Every request is accounted for: an answer, a 503 with
Retry-After (the client waits that long, at most 5 s), or the client's own cancel; anything else
(5xx, another 4xx, a dropped connection) is counted as a failure. The server's RSS, threads and file
descriptors are sampled every 5 s; growth is measured from the end of the warm-up (the first 20 % of
the run) to the end. Before the clients start, the warm-up loads every model and fills the server's
bounded embedding cache (its budget / one embedding's bytes, plus a few), so a cache filling up to its
cap is not counted as growth. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

CHAT = "smollm2-135m-instruct-q4_1"
QUESTIONS = ["Say hi.", "Name a color.", "What is 2+2?", "Give me one word.", "Count to three."]


def png_b64(size: tuple[int, int], seed: int) -> str:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class Stats:
    def __init__(self):
        self.outcomes: dict[str, Counter] = defaultdict(Counter)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.failures: list[str] = []

    def add(self, route: str, outcome: str, seconds: float | None = None, detail: str = "") -> None:
        self.outcomes[route][outcome] += 1
        if outcome == "ok" and seconds is not None:
            self.latency[route].append(seconds)
        if outcome.startswith("fail") and len(self.failures) < 50:
            self.failures.append(f"{route}: {outcome} {detail[:200]}")


async def client(i: int, url: str, deadline: float, stats: Stats, cached: list[str], rng: random.Random) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        while time.monotonic() < deadline:
            action = rng.choices(["chat", "stream", "stream_drop", "chat_cancel", "click_cached", "click_new",
                                  "image", "health"], weights=[30, 20, 5, 5, 20, 5, 5, 10])[0]
            wait = await one(action, c, stats, cached, rng, i)
            await asyncio.sleep(wait if wait else rng.uniform(0.0, 0.2))


def _busy(stats: Stats, route: str, r: httpx.Response) -> float:
    ra = r.headers.get("Retry-After")
    if ra is None or not ra.isdigit():
        stats.add(route, "fail_503_without_retry_after", detail=r.text)
        return 1.0
    stats.add(route, "busy_503")
    return min(float(ra), 5.0)


async def one(action: str, c: httpx.AsyncClient, stats: Stats, cached: list[str], rng: random.Random, i: int) -> float:
    t0 = time.perf_counter()
    msg = [{"role": "user", "content": rng.choice(QUESTIONS)}]
    route = {"chat": "chat", "chat_cancel": "chat", "stream": "chat_stream", "stream_drop": "chat_stream",
             "click_cached": "segment_cached", "click_new": "segment_new", "image": "image", "health": "health"}[action]
    try:
        if action in ("chat", "chat_cancel"):
            body = {"model": CHAT, "messages": msg, "max_tokens": 16, "temperature": 0.7}
            if action == "chat_cancel":
                try:
                    r = await asyncio.wait_for(c.post("/v1/chat/completions", json=body), timeout=0.3)
                except asyncio.TimeoutError:
                    stats.add(route, "client_cancel")
                    return 0.0
            else:
                r = await c.post("/v1/chat/completions", json=body)
        elif action in ("stream", "stream_drop"):
            body = {"model": CHAT, "messages": msg, "max_tokens": 32, "stream": True}
            async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code == 200:
                    n = 0
                    async for line in r.aiter_lines():
                        n += line.startswith("data:")
                        if action == "stream_drop" and n >= 3:
                            stats.add(route, "client_cancel")
                            return 0.0  # leaving the block disconnects mid-stream
                        if line.startswith("data:") and '"error"' in line:
                            stats.add(route, "fail_stream_error", detail=line)
                            return 0.0
                else:
                    await r.aread()
        elif action == "click_cached":
            x, y = rng.randrange(64), rng.randrange(48)
            r = await c.post("/v1/segment", json={"image_id": rng.choice(cached), "points": [[x, y, 1]]})
        elif action == "click_new":
            w, h = rng.choice([(64, 48), (128, 96), (200, 150)])
            r = await c.post("/v1/segment", json={"image": png_b64((w, h), rng.randrange(10**9)),
                                                  "points": [[w // 2, h // 2, 1]]})
        elif action == "image":
            r = await c.post("/v1/images/generations", json={"prompt": "a red square", "size": "64x64", "steps": 2,
                                                            "seed": rng.randrange(1000)})
        else:
            r = await c.get(rng.choice(["/health", "/v1/models"]))
    except (httpx.HTTPError, OSError) as e:
        stats.add(route, "fail_connection", detail=repr(e))
        return 1.0
    dt = time.perf_counter() - t0
    if r.status_code == 200:
        stats.add(route, "ok", dt)
    elif r.status_code == 503:
        return _busy(stats, route, r)
    else:
        stats.add(route, f"fail_{r.status_code}", detail=r.text)
    return 0.0


def embeddings_to_fill(home: Path, env: dict[str, str]) -> int:
    """Distinct images that fill the server's bounded embedding cache (its budget over one embedding's
    bytes, read from the installed encoder's output shape), plus a few to make it evict."""
    import numpy as np
    import onnxruntime as ort

    from edge.config import Settings
    from edge.segment.engine import cache_budget

    budget = cache_budget(Settings.from_env(env={k: v for k, v in env.items() if k.startswith("EDGE_")},
                                            home=home).ram_budget)
    enc = next((home / "models").rglob("encoder.onnx"))
    shape = ort.InferenceSession(str(enc), providers=["CPUExecutionProvider"]).get_outputs()[0].shape
    per = int(np.prod([d if isinstance(d, int) else 1 for d in shape])) * 4
    return budget // per + 8


async def prepare(url: str, fill: int) -> list[str]:
    """Warm-up: load every model, embed a few images clicks can hit by image_id, and fill the bounded
    embedding cache (``fill`` distinct images) so the growth measured afterwards is not the cache filling."""
    ids = []
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        for k in range(fill):
            r = await c.post("/v1/segment", json={"image": png_b64((64, 48), k), "points": [[10, 10, 1]]})
            r.raise_for_status()
            ids.append(r.json()["image_id"])
        (await c.post("/v1/chat/completions", json={"model": CHAT, "messages": [{"role": "user", "content": "hi"}],
                                                    "max_tokens": 2})).raise_for_status()
        (await c.post("/v1/images/generations", json={"prompt": "x", "size": "64x64", "steps": 1})).raise_for_status()
    return ids[-4:]  # the most recent: still cached when the clients start


async def sample(proc: psutil.Process, out: list, stop: asyncio.Event, every: float = 5.0) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        try:
            out.append((time.monotonic() - t0, proc.memory_info().rss, proc.num_threads(), proc.num_fds()))
        except psutil.Error:
            return
        try:
            await asyncio.wait_for(stop.wait(), timeout=every)
        except asyncio.TimeoutError:
            pass


async def soak(url: str, pid: int, clients: int, seconds: float, seed: int, fill: int = 4) -> dict:
    cached = await prepare(url, fill)
    stats, samples, stop = Stats(), [], asyncio.Event()
    sampler = asyncio.create_task(sample(psutil.Process(pid), samples, stop))
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(client(i, url, deadline, stats, cached, random.Random(seed * 1000 + i))
                           for i in range(clients)))
    stop.set()
    await sampler
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        alive = (await c.get("/health")).json()["status"] == "ok"
    warm = [s for s in samples if s[0] >= seconds * 0.2] or samples
    rows = {}
    for route in sorted(stats.outcomes):
        lat = sorted(stats.latency[route])
        p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan"))
        rows[route] = {"outcomes": dict(stats.outcomes[route]), "p50_s": round(p(0.50), 3), "p95_s": round(p(0.95), 3)}
    total = Counter()
    for o in stats.outcomes.values():
        total.update(o)
    return {
        "clients": clients, "seconds": seconds, "routes": rows, "totals": dict(total),
        "failures": sum(v for k, v in total.items() if k.startswith("fail")), "failure_examples": stats.failures,
        "fivexx": sum(v for k, v in total.items() if k.startswith("fail_5")),
        "rss_mb_after_warmup": round(warm[0][1] / 2**20, 1), "rss_mb_end": round(samples[-1][1] / 2**20, 1),
        "rss_growth_pct": round(100 * (samples[-1][1] - warm[0][1]) / warm[0][1], 2),
        "rss_mb_max": round(max(s[1] for s in samples) / 2**20, 1),
        "threads_after_warmup": warm[0][2], "threads_end": samples[-1][2], "threads_max": max(s[2] for s in samples),
        "fds_after_warmup": warm[0][3], "fds_end": samples[-1][3], "fds_max": max(s[3] for s in samples),
        "alive_after": alive, "warmup_images": fill,
        "samples": [(round(t, 1), round(r / 2**20, 1), th, fd) for t, r, th, fd in samples],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--home", help="EDGE_HOME with the chat, image and segment models (default: build the tiny ones)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    from support import CACHE, ServerProcess, chat_model_cached, edge_env, make_workloads_home, tiny_exports_cached

    if args.home:
        home = Path(args.home)
    else:
        import shutil

        home = CACHE / "soak-home"
        shutil.rmtree(home, ignore_errors=True)
        home = make_workloads_home(home, tiny_exports_cached(), chat_model_cached())
    env = edge_env(home, EDGE_OFFLINE="1", EDGE_KEEP_ALIVE="-1", EDGE_CHAT_SLOTS="4")
    fill = embeddings_to_fill(home, env)
    srv = ServerProcess(home, env=env)
    try:
        res = asyncio.run(soak(srv.url, srv.proc.pid, args.clients, args.seconds, args.seed, fill))
    finally:
        srv.stop()
    print(f"soak: {args.clients} clients x {args.seconds:.0f} s against edge-run serve on 127.0.0.1")
    print(f"{'route':<16} {'ok':>7} {'503':>6} {'cancel':>7} {'fail':>5} {'p50 s':>7} {'p95 s':>7}")
    for route, row in res["routes"].items():
        o = row["outcomes"]
        fails = sum(v for k, v in o.items() if k.startswith("fail"))
        print(f"{route:<16} {o.get('ok', 0):>7} {o.get('busy_503', 0):>6} {o.get('client_cancel', 0):>7} {fails:>5} "
              f"{row['p50_s']:>7} {row['p95_s']:>7}")
    print(f"5xx: {res['fivexx']}  failures: {res['failures']}  RSS {res['rss_mb_after_warmup']} -> {res['rss_mb_end']} MB "
          f"({res['rss_growth_pct']:+.1f} %)  threads {res['threads_after_warmup']} -> {res['threads_end']} "
          f"(max {res['threads_max']})  fds {res['fds_after_warmup']} -> {res['fds_end']} (max {res['fds_max']})  "
          f"alive after: {res['alive_after']}")
    for f in res["failure_examples"][:10]:
        print("  ", f)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    ok = res["failures"] == 0 and res["alive_after"] and res["rss_growth_pct"] < 5
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
