"""NPU benchmark: Qualcomm QNN HTP (onnxruntime-qnn; on x86-64 a SIMULATOR of the Hexagon NPU) vs
onnxruntime's CPU EP, same run, same files.

    python bench/npu.py [--workloads sam,lcm,chat] [--quant a16w8] [--runs 3] [--threads 2] [--work DIR]
                        [--sam-fp32 DIR] [--lcm-fp32 DIR] [--chat-fp32 DIR]

Without --*-fp32 it builds the tiny seeded exports (upstream MobileSAM, diffusers LCM, transformers Llama)
and converts them with `edge-run export npu` into --work (kept between runs).

Prints, per component: session creation (cold = child-process compile + EP-context cache write, warm
= load from the cache, and the CPU EP for reference), latency on the HTP simulator vs the CPU EP (the
same QDQ graph, and the fp32 export), node placement (NPU / CPU nodes), and per workload the accuracy
vs the fp32 export on the CPU (SAM: mask IoU; LCM: image PSNR; chat: top-1 next-token agreement). The simulator's latency is NO speed
claim (it emulates the Hexagon DSP on an x86 core); placement, numerics and the cache effect are real.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import table  # noqa: E402


def _time(fn, runs: int) -> float:
    fn()
    xs = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t0)
    return statistics.median(xs) * 1e3


def _created(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    obj = fn()
    return (time.perf_counter() - t0) * 1e3, obj


class FreshCache:
    """EDGE_NPU_CACHE pointed at a new empty folder for the block."""

    def __enter__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="npu-bench-cache-")
        self.old = os.environ.get("EDGE_NPU_CACHE")
        os.environ["EDGE_NPU_CACHE"] = self.tmp.name
        return Path(self.tmp.name)

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("EDGE_NPU_CACHE", None)
        else:
            os.environ["EDGE_NPU_CACHE"] = self.old
        self.tmp.cleanup()


def component_row(name: str, npu_path: Path, fp32_path: Path | None, feeds: dict, threads: int, runs: int,
                  open_npu=None) -> list:
    """cold / warm / cpu session creation, latencies, placement for one graph."""
    import onnxruntime as ort

    from edge.devices import make_session

    open_npu = open_npu or (lambda: make_session(npu_path, threads=threads, device="npu"))
    with FreshCache():
        cold_ms, _ = _created(open_npu)
        warm_ms, sess = _created(open_npu)
        npu_ms = _time(lambda: sess.run(None, feeds), runs)
        placement = getattr(sess, "placement", {}) or getattr(sess, "edge_placement", {})
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    cpu_create_ms, cpu = _created(lambda: ort.InferenceSession(str(npu_path), so, providers=["CPUExecutionProvider"]))
    qdq_ms = _time(lambda: cpu.run(None, feeds), runs)
    fp32_ms = float("nan")
    if fp32_path is not None:
        ref = ort.InferenceSession(str(fp32_path), so, providers=["CPUExecutionProvider"])
        names = {i.name for i in ref.get_inputs()}
        fp32_ms = _time(lambda: ref.run(None, {k: v for k, v in feeds.items() if k in names}), runs)
    return [name, cold_ms, warm_ms, cold_ms / warm_ms, cpu_create_ms, npu_ms, qdq_ms, fp32_ms,
            f"{placement.get('npu', '?')}/{placement.get('cpu', '?')}"]


def sam_rows(fp32: Path, npu: Path, threads: int, runs: int) -> tuple[list, dict]:
    import onnxruntime as ort

    from edge.devices import make_session
    from edge.segment import preprocess as pre
    from export.npu import sam

    name, rgb = sam.verify_images()[0]
    x, _ = pre.encoder_input(rgb)
    rows = [component_row("sam encoder", npu / "encoder.onnx", fp32 / "encoder.onnx", {"image": x}, threads, runs)]
    # the decoder body for one point + its padding point (7 prompt tokens), fed by the fp32 CPU head
    emb = ort.InferenceSession(str(fp32 / "encoder.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    h, w = rgb.shape[:2]
    prompt = pre.parse_prompt([(0.45 * w, 0.5 * h, 1)], None, (h, w))
    coords, labels = prompt.onnx_inputs((h, w))
    head = ort.InferenceSession(str(npu / "decoder_head.onnx"), providers=["CPUExecutionProvider"])
    tokens, dense = head.run(["prompt_tokens", "dense_embeddings"], {
        "point_coords": coords, "point_labels": labels, "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(1, np.float32)})
    feeds = {"image_embeddings": emb, "prompt_tokens": tokens, "dense_embeddings": dense}
    rows.append(component_row("sam decoder body (2 pts)", npu / "decoder.onnx", None, feeds, threads, runs,
                              open_npu=lambda: make_session(npu / "decoder.onnx", threads=threads,
                                                            device="npu").session(tokens.shape[1])))
    acc = sam.verify(fp32, npu, [json.loads((npu / "edge-model.json").read_text())["precision"]],
                     json.loads((npu / "edge-model.json").read_text())["precision"], devices=["cpu", "npu"],
                     images=1, cases=2, threads=threads)
    return rows, {k: f"min mask IoU {v['min_mask_iou']:.3f} (mean {v['mean_mask_iou']:.3f}), embedding rel err "
                     f"{v['max_embedding_rel_err']:.3f}" for k, v in acc.items()}


def lcm_rows(fp32: Path, npu: Path, threads: int, runs: int) -> tuple[list, dict]:
    from edge.manifest import read
    from export.npu import lcm

    m = read(npu, task="image")
    src_m = read(fp32, task="image")
    feeds = lcm.record_feeds(fp32, src_m, m.default_size, 2, threads, prompts=lcm.VERIFY_PROMPTS[:1])
    rows = []
    for name, rel in m.precisions[m.precision].items():
        if name not in feeds:
            continue
        rows.append(component_row(f"lcm {name}", npu / rel, fp32 / src_m.precisions["fp32"][name], feeds[name][0],
                                  threads, runs))
    acc = lcm.verify(fp32, npu, [m.precision], devices=["cpu", "npu"], size=m.default_size, threads=threads)
    return rows, {k: f"image PSNR {v['min_psnr']:.1f} dB, text embedding rel err {v['text_embedding_rel_err']:.3f}"
                  for k, v in acc.items()}


def chat_rows(fp32: Path, npu: Path, threads: int, runs: int) -> tuple[list, dict]:
    from export.npu import chat

    m = json.loads((npu / "edge-model.json").read_text())
    L, kv = int(m["context_length"]), m["kv"]
    feeds = {"input_ids": np.array([[5]], np.int64), "position_ids": np.array([[10]], np.int64),
             "attention_mask": np.r_[np.ones(10), np.zeros(L - 10), np.ones(1)].astype(np.int64)[None]}
    for i in range(kv["num_layers"]):
        for t in ("key", "value"):
            feeds[f"past_key_values.{i}.{t}"] = np.zeros((1, kv["num_kv_heads"], L, kv["head_dim"]), np.float32)

    from edge.devices import make_session

    rows = [component_row(f"chat decoder step (ctx {L})", npu / "model.onnx", None, feeds, threads, runs,
                          open_npu=lambda: make_session(npu / "model.onnx", threads=threads, device="npu").session)]
    acc = chat.verify(fp32, npu, [m["precision"]], m["precision"], devices=["cpu", "npu"], threads=threads)
    return rows, {k: f"top-1 next-token agreement {v['top1_agreement']:.3f} over {v['tokens']} tokens, greedy answer "
                     f"{'same' if v['greedy_same'] else 'different'}" for k, v in acc.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="sam,lcm,chat")
    ap.add_argument("--quant", default="a16w8")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "edge-run-bench" / "npu"))
    ap.add_argument("--sam-fp32", default=None)
    ap.add_argument("--lcm-fp32", default=None)
    ap.add_argument("--chat-fp32", default=None)
    args = ap.parse_args(argv)

    from edge.npu import eps
    from export.npu import tiny

    if eps.npu_device() is None:
        print(f"no NPU execution provider: {eps.plugin_errors()}")
        return 1
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows, accuracy = [], {}
    for wl in [w.strip() for w in args.workloads.split(",") if w.strip()]:
        fp32 = Path(getattr(args, f"{wl}_fp32") or work / f"{wl}-fp32")
        if not (fp32 / "edge-model.json").exists():
            {"sam": tiny.sam_fp32, "lcm": tiny.lcm_fp32, "chat": tiny.chat_fp32}[wl](fp32)
        npu = work / f"{wl}-npu-{args.quant}"
        if not (npu / "edge-model.json").exists():
            tiny.to_npu(fp32, npu, *(["--context", "128"] if wl == "chat" else []), quant=args.quant)
        r, a = {"sam": sam_rows, "lcm": lcm_rows, "chat": chat_rows}[wl](fp32, npu, args.threads, args.runs)
        rows += r
        accuracy.update({f"{wl} {k}": v for k, v in a.items()})
    info = eps.npu_device()
    print(f"\nQNN HTP via {info.source} {info.version} ({info.detail}); quant {args.quant}; threads {args.threads}; "
          f"median of {args.runs} runs")
    print(table(["component", "create cold ms (compile)", "create warm ms (EP-context cache)", "cold/warm",
                 "create CPU EP ms", "run HTP-sim ms", "run CPU QDQ ms", "run CPU fp32 ms", "nodes NPU/CPU"], rows))
    print("\naccuracy vs the fp32 export on the CPU EP:")
    for k, v in accuracy.items():
        print(f"  {k:<22} {v}")
    print("\nThe HTP here is Qualcomm's x86-64 simulator: its run times are NO speed claim for a phone or laptop "
          "NPU. Placement, numerics and the compile-cache effect are what the real NPU path does.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
