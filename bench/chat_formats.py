"""Chat formats, same model, same run: GGUF q4_k_m / q8_0 (llama.cpp engine) vs ONNX int4 / int8
(edge's ONNX engine over onnxruntime) — decode tok/s, TTFT, file size, RSS.

    python bench/chat_formats.py [--gguf-dir DIR --onnx-int4 DIR --onnx-int8 DIR] [--threads 2] [--runs 3]

DIR defaults: folders under --work (~/.cache/edge-run-bench/chat-formats), made on first use from the
default chat model (SmolLM2 Q4_1 GGUF, pulled into the bench store): dequantized into a transformers
folder, then ``edge-run export llm --quant q8_0,q4_k_m`` and ``edge-run export llm-onnx --quant int4|int8``. Each engine runs in its own worker process (so RSS is that engine's
alone; the workers take turns, one prompt each per round), through the engines' shared chat
interface with greedy decoding. Decode tok/s = (tokens - 1)
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


class Worker:
    """One engine in its own process (so RSS is that engine's alone), driven over stdin/stdout."""

    def __init__(self, kind: str, path: str, threads: int, tokens: int):
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", kind, path, "--threads", str(threads),
                                      "--tokens", str(tokens)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("bench worker died")
        return json.loads(line)

    def run(self, i: int) -> dict:
        self.proc.stdin.write(f"{i}\n")
        return self._read()

    def close(self) -> dict:
        self.proc.stdin.write("rss\n")
        out = self._read()
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        return out


def serve(kind: str, path: str, threads: int, tokens: int) -> None:
    """Worker side: load, warm up, then answer one prompt per stdin line with its timings."""
    import psutil

    from edge.chat.request import ChatRequest

    proc = psutil.Process()
    if kind == "gguf":
        from edge.chat.engine import LlamaChatEngine
        eng = LlamaChatEngine(path, threads=threads, slots=1, n_ctx=2048)
        size = Path(path).stat().st_size
    else:
        from edge.chat.onnx_engine import OnnxChatEngine
        eng = OnnxChatEngine(path, threads=threads, slots=1, n_ctx=2048)
        size = sum(p.stat().st_size for p in Path(path).glob("model.onnx*"))

    def one(i: int) -> dict:
        req = ChatRequest(messages=[{"role": "user", "content": PROMPT.format(i=i)}], max_tokens=tokens,
                          temperature=0.0, min_p=0.0)
        t0 = time.perf_counter()
        times = []
        for step in eng.chat_steps(req):
            if step.kind == "token" and step.tokens:
                times.append(time.perf_counter())
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 else float("nan")
        return {"decode": rate, "ttft": (times[0] - t0) * 1000 if times else float("nan"), "tokens": len(times)}

    one(-1)  # warm up
    print(json.dumps({"size": size}), flush=True)
    for line in sys.stdin:
        if line.strip() == "rss":
            print(json.dumps({"rss": proc.memory_info().rss}), flush=True)
            break
        print(json.dumps(one(int(line))), flush=True)
    eng.close()


def prepare(work: Path) -> dict[str, Path]:
    """The three exports of the default chat model under ``work``, made by the real recipes if missing."""
    out = {"gguf": work / "smol-gguf", "int4": work / "smol-onnx-int4", "int8": work / "smol-onnx-int8"}
    if all(p.exists() for p in out.values()):
        return out
    from _common import CHAT_MODEL, bench_home

    from export.llm.source import gguf_to_hf

    hf = work / "smol-hf"
    if not hf.exists():
        gguf = bench_home() / "models" / CHAT_MODEL / "model.gguf"
        print(f"dequantizing {gguf.name} into {hf} (once) ...", flush=True)
        gguf_to_hf(gguf, hf)
    cli = [sys.executable, "-m", "edge.cli", "export"]
    jobs = {"gguf": ["llm", str(hf), "--quant", "q8_0,q4_k_m"], "int4": ["llm-onnx", str(hf), "--quant", "int4"],
            "int8": ["llm-onnx", str(hf), "--quant", "int8"]}
    for name, job in jobs.items():
        if not out[name].exists():
            print(f"exporting {name} into {out[name]} (once) ...", flush=True)
            subprocess.run(cli + job + ["--out", str(out[name])], check=True,
                           cwd=str(Path(__file__).resolve().parent.parent))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "edge-run-bench" / "chat-formats"),
                    help="where the default exports are made and cached")
    ap.add_argument("--gguf-dir", default=None, help="folder with model.q4_k_m.gguf and model.q8_0.gguf")
    ap.add_argument("--onnx-int4", default=None, help="edge-run export llm-onnx --quant int4 folder")
    ap.add_argument("--onnx-int8", default=None, help="edge-run export llm-onnx --quant int8 folder")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        serve(args.worker[0], args.worker[1], args.threads, args.tokens)
        return
    if not (args.gguf_dir and args.onnx_int4 and args.onnx_int8):
        made = prepare(Path(args.work))
        args.gguf_dir = args.gguf_dir or str(made["gguf"])
        args.onnx_int4 = args.onnx_int4 or str(made["int4"])
        args.onnx_int8 = args.onnx_int8 or str(made["int8"])
    cases = [("GGUF q4_k_m (llama.cpp)", "gguf", str(Path(args.gguf_dir) / "model.q4_k_m.gguf")),
             ("GGUF q8_0 (llama.cpp)", "gguf", str(Path(args.gguf_dir) / "model.q8_0.gguf")),
             ("ONNX int4 (edge ORT engine)", "onnx", args.onnx_int4),
             ("ONNX int8 (edge ORT engine)", "onnx", args.onnx_int8)]
    workers = {}
    for label, kind, path in cases:
        if Path(path).exists():
            workers[label] = Worker(kind, path, args.threads, args.tokens)
        else:
            print(f"skip {label}: {path} missing")
    results: dict[str, list[dict]] = {k: [] for k in workers}
    for rnd in range(args.runs):  # interleave so drift in machine load hits every engine alike
        for label, w in workers.items():
            results[label].append(w.run(rnd))
    rss = {label: w.close()["rss"] for label, w in workers.items()}
    agg = {label: (median([r["decode"] for r in rs]), median([r["ttft"] for r in rs])) for label, rs in results.items()}
    peer = agg.get("GGUF q4_k_m (llama.cpp)")
    rows = []
    for label, (rate, ttft) in agg.items():
        rows.append([label, rate, ttft, workers[label].info["size"] / 2**20, rss[label] / 2**20,
                     rate / peer[0] if peer else float("nan")])
    print(f"SmolLM2-135M-Instruct, threads {args.threads}, {args.tokens} tokens greedy, median of {args.runs} runs\n")
    print(table(["engine", "decode tok/s", "TTFT ms", "file MiB", "RSS MiB", "tok/s vs GGUF q4_k_m"], rows))


if __name__ == "__main__":
    main()
