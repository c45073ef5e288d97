"""Chat formats, same model, same run: GGUF q4_k_m / q8_0 (llama.cpp engine) vs ONNX int4 / int8
(edge's ONNX engine over onnxruntime) — decode tok/s, TTFT, file size, RSS.

    python bench/chat_formats.py --gguf-dir DIR --onnx-int4 DIR --onnx-int8 DIR [--threads 2] [--runs 3]

DIR defaults: the exports of the SmolLM2 default model made by
``edge-run export llm <dequantized SmolLM2> --quant q8_0,q4_k_m`` and ``edge-run export llm-onnx ...``
(see the report of issue 6). Each engine runs in its own worker process (so RSS is that engine's
alone), through the engines' shared chat interface with greedy decoding. Decode tok/s = (tokens - 1)
/ (last token time - first token time); TTFT = request -> first token. The peer for the ONNX engine is
llama.cpp on the same weights (onnxruntime-genai published Qwen2.5-0.5B int4 at 67 tok/s vs llama.cpp's
112 on one CPU: ratio 0.60).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import median, table  # noqa: E402

PROMPT = "Question {i}: write a detailed paragraph about the history of bread making in Europe."


def worker(kind: str, path: str, threads: int, runs: int, tokens: int) -> dict:
    import psutil

    from edge.chat.request import ChatRequest

    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    if kind == "gguf":
        from edge.chat.engine import LlamaChatEngine
        eng = LlamaChatEngine(path, threads=threads, slots=1, n_ctx=2048)
        size = Path(path).stat().st_size
    else:
        from edge.chat.onnx_engine import OnnxChatEngine
        eng = OnnxChatEngine(path, threads=threads, slots=1, n_ctx=2048)
        size = sum(p.stat().st_size for p in Path(path).glob("model.onnx*"))
    rss_loaded = proc.memory_info().rss

    def one(i: int) -> tuple[float, float, int]:
        req = ChatRequest(messages=[{"role": "user", "content": PROMPT.format(i=i)}], max_tokens=tokens,
                          temperature=0.0, min_p=0.0)
        t0 = time.perf_counter()
        times = []
        gen = eng.chat_steps(req)
        for step in gen:
            if step.kind == "token" and step.tokens:
                times.append(time.perf_counter())
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 else float("nan")
        return rate, (times[0] - t0) * 1000 if times else float("nan"), len(times)

    one(-1)  # warm up
    results = [one(i) for i in range(runs)]
    out = {"kind": kind, "path": path, "size": size, "decode": median([r[0] for r in results]),
           "ttft": median([r[1] for r in results]), "tokens": median([r[2] for r in results]),
           "rss": proc.memory_info().rss, "rss_model": rss_loaded - rss0}
    eng.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf-dir", default="/tmp/llmt/smol-gguf")
    ap.add_argument("--onnx-int4", default="/tmp/llmt/smol-onnx-int4")
    ap.add_argument("--onnx-int8", default="/tmp/llmt/smol-onnx-int8")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.threads, args.runs, args.tokens)))
        return
    cases = [("GGUF q4_k_m (llama.cpp)", "gguf", str(Path(args.gguf_dir) / "model.q4_k_m.gguf")),
             ("GGUF q8_0 (llama.cpp)", "gguf", str(Path(args.gguf_dir) / "model.q8_0.gguf")),
             ("ONNX int4 (edge ORT engine)", "onnx", args.onnx_int4),
             ("ONNX int8 (edge ORT engine)", "onnx", args.onnx_int8)]
    rows, got = [], {}
    for label, kind, path in cases:
        if not Path(path).exists():
            print(f"skip {label}: {path} missing")
            continue
        res = subprocess.run([sys.executable, __file__, "--worker", kind, path, "--threads", str(args.threads),
                              "--runs", str(args.runs), "--tokens", str(args.tokens)],
                             capture_output=True, text=True, check=True)
        got[label] = json.loads(res.stdout.strip().splitlines()[-1])
    peer = got.get("GGUF q4_k_m (llama.cpp)")
    for label, r in got.items():
        rows.append([label, r["decode"], r["ttft"], r["size"] / 2**20, r["rss"] / 2**20,
                     r["decode"] / peer["decode"] if peer else float("nan")])
    print(f"SmolLM2-135M-Instruct, threads {args.threads}, {args.tokens} tokens greedy, median of {args.runs} runs\n")
    print(table(["engine", "decode tok/s", "TTFT ms", "file MiB", "RSS MiB", "tok/s vs GGUF q4_k_m"], rows))


if __name__ == "__main__":
    main()
