"""Chat speed: edge-run (Python API, and HTTP streaming through `edge-run serve`) vs raw
llama-cpp-python, same model, same threads, same prompts, same run.

    python bench/chat.py [--threads 2] [--runs 5] [--tokens 128]
    python bench/chat.py --concurrent 1,4,8 [--ctx 4096]   # N streamed chats at once, vs llama-server

Decode tok/s = (tokens - 1) / (last token time - first token time); TTFT = request -> first token.
Each run uses a different prompt so neither side answers from a cached prompt. Each engine runs in its own
process: llama.cpp's OpenMP workers spin at their barriers only while libgomp manages no more threads than
there are CPUs, so raw llama-cpp-python decoding on the main thread beside edge-run's scheduler thread (each
with a team) halves both (measured: 124 -> 57 tok/s on 2 cores).

--concurrent: for each N, llama.cpp's own `llama-server` (bench/llama_server.py builds it from the llama.cpp
that llama-cpp-python vendors; -np N slots of a --ctx window each, continuous batching) and `edge-run serve`
(EDGE_CHAT_SLOTS=N), both up, each warmed with one request per slot; N streamed greedy chats through the
`openai` client from N threads, in paired rounds (see concurrent_table). Aggregate tok/s = streamed tokens /
(last token - first request).
Peak RSS = the server process and its children, polled every 50 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CHAT_MODEL, bench_home, median, table  # noqa: E402

if TYPE_CHECKING:
    import openai

PROMPT = "Question {i}: write a detailed paragraph about the history of bread making in Europe."

PAUSE = 2.0
"""Seconds before each timed run of an engine: edge-run's CPU-load average (halving every 0.2 s) forgets the last one."""


def measure(stream_fn, runs: int) -> tuple[float, float]:
    """stream_fn(i) yields text pieces; returns (median decode tok/s, median TTFT ms)."""
    rates, ttfts = [], []
    for i in range(runs):
        t0 = time.perf_counter()
        times = []
        for piece in stream_fn(i):
            if piece:
                times.append(time.perf_counter())
        if len(times) > 2:
            rates.append((len(times) - 1) / (times[-1] - times[0]))
            ttfts.append((times[0] - t0) * 1000)
    return median(rates), median(ttfts)


def raw_llama(path: Path, threads: int, tokens: int):
    from edge.chat.engine import open_llama  # llama_cpp.Llama, minus the AMX path that crashes on AMX CPUs

    from edge.chat.batch import llama_kwargs  # the engine's attention settings, so both compute the same graph

    llm = open_llama(model_path=str(path), n_ctx=4096, n_threads=threads, n_threads_batch=threads,
                     **llama_kwargs(str(path)), verbose=False)

    def run(i):
        for chunk in llm.create_chat_completion([{"role": "user", "content": PROMPT.format(i=i)}], temperature=0,
                                                min_p=0, max_tokens=tokens, stream=True):
            yield chunk["choices"][0]["delta"].get("content")
    return llm, run


def edge_api(home: Path, threads: int, tokens: int):
    from edge.api import Runtime

    rt = Runtime(home=str(home), threads=threads, offline=True, chat_slots=1, keep_alive=-1)
    rt.chat([{"role": "user", "content": "warm up"}], max_tokens=2)

    def run(i):
        yield from rt.chat([{"role": "user", "content": PROMPT.format(i=i)}], stream=True, temperature=0, min_p=0,
                           max_tokens=tokens)
    return rt, run


class Worker:
    """``raw_llama`` or ``edge_api`` in a child process of its own (see the module docstring); ``run(i)``
    measures one chat there: (decode tok/s, TTFT ms)."""

    def __init__(self, name: str, threads: int, tokens: int):
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", name, "--threads", str(threads),
                                      "--tokens", str(tokens)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {name} worker did not start (exit code {self.proc.wait()})")

    def run(self, i: int) -> tuple[float, float]:
        self.proc.stdin.write(f"{i}\n")
        self.proc.stdin.flush()
        return tuple(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


def worker(name: str, home: Path, threads: int, tokens: int) -> None:
    """The child side of :class:`Worker`: one measured chat per run index read from stdin."""
    path = home / "models" / CHAT_MODEL / "model.gguf"
    obj, fn = raw_llama(path, threads, tokens) if name == "raw" else edge_api(home, threads, tokens)
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(measure(lambda _: fn(int(line)), 1)), flush=True)
    obj.close()


def edge_http(home: Path, threads: int, tokens: int, port: int = 8791):
    env = {**os.environ, "EDGE_HOME": str(home), "EDGE_THREADS": str(threads), "EDGE_OFFLINE": "1",
           "EDGE_CHAT_SLOTS": "1", "EDGE_KEEP_ALIVE": "-1"}
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.1)

    def post(i, stream=True):
        body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": PROMPT.format(i=i)}],
                "temperature": 0, "min_p": 0, "max_tokens": tokens, "stream": stream}
        req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        return urllib.request.urlopen(req, timeout=300)

    post(-1, stream=False).read()  # load the model

    def run(i):
        with post(i) as resp:
            for line in resp:
                if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                    delta = json.loads(line[6:])["choices"]
                    if delta:
                        yield delta[0]["delta"].get("content")
    return proc, run


# --- concurrent chats: edge-run serve vs llama-server -------------------------------------------------------


def cpu_flags() -> dict[str, bool]:
    """The SIMD / matrix extensions llama.cpp can use here, from /proc/cpuinfo."""
    try:
        flags = set(next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
                    .split(":", 1)[1].split())
    except (OSError, StopIteration):
        flags = set()
    names = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16")
    return {**{n: n in flags for n in names}, "amx": bool({"amx_tile", "amx_int8", "amx_bf16"} & flags)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeakRss(threading.Thread):
    """Polls a process's RSS plus its children's every 50 ms; .peak in bytes."""

    def __init__(self, pid: int):
        import psutil

        super().__init__(daemon=True)
        self.proc, self.peak, self.done = psutil.Process(pid), 0, threading.Event()

    def run(self) -> None:
        import psutil

        while not self.done.wait(0.05):
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass


@contextlib.contextmanager
def serving(cmd: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[tuple[str, PeakRss]]:
    """Start a server, wait for /health, yield (base url, its RSS poller); stop it at the end."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    rss = PeakRss(proc.pid)
    rss.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                ready = urllib.request.urlopen(url + "/health", timeout=1).status == 200  # llama-server: 503 loading
                break
            except OSError:
                ready = False
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        if not ready:
            log.seek(0)
            raise RuntimeError(f"{cmd[0]} did not come up (exit code {proc.returncode}):\n"
                               + log.read()[-2000:].decode(errors="replace"))
        yield url, rss
    finally:
        rss.done.set()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        rss.join()
        log.close()


def stream_chat(client: openai.OpenAI, prompt: str, tokens: int) -> tuple[str, int, list[float]]:
    """One streamed greedy chat: (text, completion tokens, arrival time of each content piece)."""
    stream = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=tokens, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body={"min_p": 0})
    text, times, used = [], [], None
    for chunk in stream:
        if chunk.usage:
            used = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
            times.append(time.perf_counter())
    return "".join(text), used or len(times), times


def at_once(client: openai.OpenAI, prompts: list[str], tokens: int) -> tuple[float, float, list[str]]:
    """All prompts streamed at once from one thread each: (aggregate tok/s, decode tok/s of the first, texts)."""
    with ThreadPoolExecutor(len(prompts)) as pool:
        t0 = time.perf_counter()
        outs = list(pool.map(lambda p: stream_chat(client, p, tokens), prompts))
    end = max((times[-1] for _, _, times in outs if times), default=time.perf_counter())
    times = outs[0][2]
    decode = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 else float("nan")
    return sum(n for _, n, _ in outs) / (end - t0), decode, [text for text, _, _ in outs]


def server_cmd(name: str, n: int, args: argparse.Namespace, gguf: Path, home: Path,
               port: int) -> tuple[list[str], dict[str, str]]:
    """Command and environment of `llama-server` or `edge-run serve` with n slots of args.ctx tokens each."""
    if name == "llama-server":
        from llama_server import build

        return [str(build()), "-m", str(gguf), "-t", str(args.threads), "-c", str(args.ctx * n), "-np", str(n),
                "--host", "127.0.0.1", "--port", str(port), *LLAMA_SERVER_EXTRA], dict(os.environ)
    env = {**os.environ, "EDGE_HOME": str(home), "EDGE_THREADS": str(args.threads), "EDGE_OFFLINE": "1",
           "EDGE_CHAT_SLOTS": str(n), "EDGE_CTX": str(args.ctx), "EDGE_KEEP_ALIVE": "-1"}
    return [sys.executable, "-m", "edge.cli", "serve", "--port", str(port)], env


# llama.cpp's extra weight buffers (AMX, repack) segfault on AMX CPUs (see edge.chat.engine.open_llama, which
# turns them off there too); elsewhere llama-server keeps its defaults
LLAMA_SERVER_EXTRA = ["--no-repack"] if cpu_flags()["amx"] else []


def concurrent_table(args: argparse.Namespace, home: Path, gguf: Path) -> None:
    """The --concurrent table: aggregate tok/s and peak RSS of N simultaneous chats, llama-server vs edge-run.

    Paired rounds: for each N both servers are up (an idle server takes no CPU), and each round runs the same
    N fresh prompts on one, then on the other (the order alternating), a pause apart: the ratio of a round
    compares the two a few seconds apart, so the drift of a shared machine's speed (20-40 % over minutes
    here) cancels; the table gives the median of the rounds' ratios and their range. The pause lets edge-run's
    CPU-load average forget the other server's run (it reads the other server as another program)."""
    import openai

    load = os.getloadavg()[0]  # llama.cpp's spinning threads collapse when another program takes a core
    names = ("llama-server", "edge-run")
    agg = {(name, n): [] for name in names for n in args.concurrent}
    decode, rss, same = {name: [] for name in names}, dict.fromkeys(agg, 0), {}
    for n in args.concurrent:
        with contextlib.ExitStack() as stack:
            # 1. both servers, each warmed with one request per slot
            clients, peaks = {}, {}
            for name in names:
                port = free_port()
                cmd, env = server_cmd(name, n, args, gguf, home, port)
                url, peaks[name] = stack.enter_context(serving(cmd, port, env))
                clients[name] = openai.OpenAI(base_url=url + "/v1", api_key="x", timeout=600, max_retries=0)
                at_once(clients[name], [f"warm up {k}" for k in range(n)], 2)
            # 2. edge-run: is each concurrent answer its solo greedy answer? (info only)
            check = [PROMPT.format(i=f"check {n}.{k}") for k in range(n)]
            solo = [stream_chat(clients["edge-run"], p, args.tokens)[0] for p in check]
            same[n] = sum(a == b for a, b in zip(solo, at_once(clients["edge-run"], check, args.tokens)[2]))
            # 3. the timed rounds: n fresh prompts at once, on each server in turn
            for rnd in range(args.runs):
                prompts = [PROMPT.format(i=f"{n}.{rnd}.{k}") for k in range(n)]
                for name in (names if rnd % 2 == 0 else names[::-1]):
                    time.sleep(PAUSE)
                    rate, dec, _ = at_once(clients[name], prompts, args.tokens)
                    agg[name, n].append(rate)
                    if n == 1:
                        decode[name].append(dec)
            for name in names:
                rss[name, n] = peaks[name].peak

    # 4. the table
    rows = []
    for n in args.concurrent:
        (a, b), (ra, rb) = [median(agg[k, n]) for k in names], [rss[k, n] / 2**20 for k in names]
        ratios = [e / s for s, e in zip(agg["llama-server", n], agg["edge-run", n])]
        rows.append([n, a, b, median(ratios), f"{min(ratios):.2f}-{max(ratios):.2f}", f"{ra:.0f} / {rb:.0f}",
                     rb / ra])
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu_flags().items())
    print(f"model {CHAT_MODEL}, threads {args.threads}, {args.tokens} tokens per chat, {args.runs} paired rounds; "
          f"CPU: {flags}; load average before the bench {load:.1f} (run it on an idle machine)")
    flags = " ".join(["-t", str(args.threads), "-c", f"{args.ctx}*N", "-np", "N", *LLAMA_SERVER_EXTRA])
    print(f"llama-server -m <gguf> {flags} (its other defaults); "
          f"edge-run serve: EDGE_CHAT_SLOTS=N EDGE_CTX={args.ctx} EDGE_THREADS={args.threads}; "
          "ratio = edge-run / llama-server in the same round\n")
    print(table(["N", "llama-server agg tok/s", "edge-run agg tok/s", "ratio (median of rounds)", "rounds' range",
                 "peak RSS llama-server / edge-run MB", "RSS ratio"], rows))
    if 1 in args.concurrent:
        a, b = median(decode["llama-server"]), median(decode["edge-run"])
        ratios = [e / s for s, e in zip(decode["llama-server"], decode["edge-run"])]
        print(f"\nsingle stream (N=1) decode tok/s: llama-server {a:.1f}, edge-run {b:.1f}, "
              f"ratio {median(ratios):.2f} (median of rounds)")
    print("edge-run concurrent answer == its solo greedy answer: "
          + ", ".join(f"N={n} {k}/{n}" for n, k in same.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--concurrent", type=lambda v: [int(n) for n in v.split(",")], default=None,
                    help="e.g. 1,4,8: N simultaneous chats against llama-server instead of the single-stream table")
    ap.add_argument("--ctx", type=int, default=4096, help="--concurrent: each chat's context window")
    ap.add_argument("--worker", choices=("raw", "api"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    home = bench_home()
    if args.worker:
        return worker(args.worker, home, args.threads, args.tokens)
    path = home / "models" / CHAT_MODEL / "model.gguf"
    if args.concurrent:
        return concurrent_table(args, home, path)

    rows = []
    raw = Worker("raw", args.threads, args.tokens)
    api = Worker("api", args.threads, args.tokens)
    proc, http = edge_http(home, args.threads, args.tokens)
    try:
        results = {"raw": [], "api": [], "http": []}
        engines = {"raw": raw.run, "api": api.run, "http": lambda i: measure(lambda _: http(i), 1)}
        for rnd in range(args.runs):  # interleave the three so drift in machine load hits all alike; the pause
            # lets edge-run's CPU-load average forget the previous engine's run (else it reads it as another
            # program's and prefills its prompt on one thread: TTFT 1.8x raw's)
            for name, run in engines.items():
                time.sleep(PAUSE)
                results[name].append(run(rnd * 100))
        agg = {k: (median([r for r, _ in v]), median([t for _, t in v])) for k, v in results.items()}
        base_rate, base_ttft = agg["raw"]
        for name, label in (("raw", "raw llama-cpp-python (peer)"), ("api", "edge-run Runtime.chat stream"),
                            ("http", "edge-run serve, HTTP SSE")):
            rate, ttft = agg[name]
            rows.append([label, rate, ttft, rate / base_rate, ttft / base_ttft])
    finally:
        proc.terminate()
        api.close()
        raw.close()
    print(f"model {CHAT_MODEL}, threads {args.threads}, {args.tokens} tokens, median of {args.runs} runs\n")
    print(table(["engine", "decode tok/s", "TTFT ms", "tok/s vs raw", "TTFT vs raw"], rows))


if __name__ == "__main__":
    main()
