"""Chat speed: edge-run (Python API, and HTTP streaming through `edge-run serve`) vs raw
llama-cpp-python, same model, same threads, same prompts, same run.

    python bench/chat.py [--threads 2] [--runs 5] [--tokens 128]

Decode tok/s = (tokens - 1) / (last token time - first token time); TTFT = request -> first token.
Each run uses a different prompt so neither side answers from a cached prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CHAT_MODEL, bench_home, median, table  # noqa: E402

PROMPT = "Question {i}: write a detailed paragraph about the history of bread making in Europe."


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

    llm = open_llama(model_path=str(path), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    home = bench_home()
    path = home / "models" / CHAT_MODEL / "model.gguf"

    rows = []
    llm, raw = raw_llama(path, args.threads, args.tokens)
    rt, api = edge_api(home, args.threads, args.tokens)
    proc, http = edge_http(home, args.threads, args.tokens)
    try:
        results = {"raw": [], "api": [], "http": []}
        for rnd in range(args.runs):  # interleave the three so drift in machine load hits all alike
            for name, fn in (("raw", raw), ("api", api), ("http", http)):
                results[name].append(measure(lambda i: fn(i + rnd * 100), 1))
        agg = {k: (median([r for r, _ in v]), median([t for _, t in v])) for k, v in results.items()}
        base_rate, base_ttft = agg["raw"]
        for name, label in (("raw", "raw llama-cpp-python (peer)"), ("api", "edge-run Runtime.chat stream"),
                            ("http", "edge-run serve, HTTP SSE")):
            rate, ttft = agg[name]
            rows.append([label, rate, ttft, rate / base_rate, ttft / base_ttft])
    finally:
        proc.terminate()
        rt.close()
        llm.close()
    print(f"model {CHAT_MODEL}, threads {args.threads}, {args.tokens} tokens, median of {args.runs} runs\n")
    print(table(["engine", "decode tok/s", "TTFT ms", "tok/s vs raw", "TTFT vs raw"], rows))


if __name__ == "__main__":
    main()
