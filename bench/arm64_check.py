"""The workloads run by bench/arm64.sh on x86 and on emulated aarch64, and the comparison (issue 20.4).

    python bench/arm64_check.py prepare WORK          # x86, with the export extra: tiny LCM + tiny SAM + default chat
    python bench/arm64_check.py run WORK OUT.npz      # either machine, runtime only (never imports torch)
    python bench/arm64_check.py compare REF.npz OTHER.npz [--json result.json]

``prepare`` makes WORK/home, an EDGE_HOME with the default chat model (SmolLM2-135M Q4_1 from PyPI), the
tiny LCM and the tiny MobileSAM exports the test suite builds (seeded random weights, through the real
recipes), and WORK/photo.png (the suite's coffee photo). ``run`` answers two greedy chats, renders two
tiny-LCM images (4 steps, fixed seeds) and makes masks for three clicks, through the Python API as a Pi app
would, and saves every output with llama.cpp's logits over a fixed chat (PROBE). ``compare`` holds the other
run to the suite's fp32 tolerances: every image pixel within 2/255, every mask's IoU >= 0.99 and its score
within 1e-4; and the chat by its logits: as close to transformers' fp32 forward pass of the same dequantized
GGUF (computed by ``prepare``) as the reference build's are. The greedy chat text is reported, not held:
llama.cpp quantizes activations to 8 bits in each ISA's own kernels, so the logits of an AVX2 and a NEON
build differ by up to ~1 (measured), and greedy decoding of a 135M model flips where two tokens nearly tie.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHATS = ("Name three colours of the rainbow.", "What is the capital of France?")
IMAGES = (("a lighthouse at dusk", 7), ("a red bicycle by a canal", 8))
# a chat-formatted prompt and a continuation, fed to llama.cpp token by token on both machines: the logits at
# every position show how far the two builds' arithmetic differs (greedy text flips where two tokens nearly tie)
PROBE = ("<|im_start|>user\nName three colours of the rainbow.<|im_end|>\n<|im_start|>assistant\n"
         "The rainbow is a beautiful sight, but it's not just about the colors of the rainbow.")
CLICKS = ([(300, 200, 1)], [(120, 150, 1), (300, 200, 0)], [(450, 300, 1)])
CHAT_MODEL = "smollm2-135m-instruct-q4_1"
IMAGE_TOL_255 = 2          # tests/image/test_parity.py assert_close
MASK_MIN_IOU = 0.99        # tests/segment/test_parity.py
SCORE_ATOL = 1e-4


def prepare(work: Path) -> None:
    """WORK/home with the three workloads installed through the registry, and WORK/photo.png (x86 only)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from PIL import Image
    from skimage import data
    from support import chat_model_cached, make_workloads_home, tiny_exports_cached

    home = work / "home"
    if not (home / "models.lock").exists():
        make_workloads_home(home, tiny_exports_cached(), chat_model_cached())
    Image.fromarray(data.coffee()).save(work / "photo.png")
    np.save(work / "probe_torch.npy", _probe_logits_torch(home / "models" / CHAT_MODEL))


def _probe_logits_torch(model_dir: Path) -> np.ndarray:
    """transformers' fp32 forward pass over PROBE with the GGUF's weights dequantized (the reference neither
    llama.cpp build wrote), on the token ids llama.cpp's own tokenizer gives."""
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    vocab = Llama(str(model_dir / "model.gguf"), vocab_only=True, verbose=False)
    tokens = vocab.tokenize(PROBE.encode(), add_bos=False, special=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), gguf_file="model.gguf", dtype=torch.float32)
    with torch.inference_mode():
        return model(torch.tensor([tokens])).logits[0].numpy()


def run(work: Path, out: Path) -> None:
    """Every output of the three workloads for fixed seeds, saved to ``out`` (an .npz)."""
    from PIL import Image

    from edge.api import Runtime

    arrays: dict[str, np.ndarray] = {}
    meta: dict = {"machine": platform.machine(), "python": platform.python_version(), "seconds": {}}
    with Runtime(home=str(work / "home"), threads=2, offline=True, keep_alive=-1) as rt:
        # 1. chat: greedy answers, a fixed seed
        t0 = time.perf_counter()
        meta["chat"] = [rt.chat([{"role": "user", "content": q}], temperature=0, max_tokens=48, seed=1).text
                        for q in CHATS]
        meta["seconds"]["chat"] = round(time.perf_counter() - t0, 1)
        arrays["probe_logits"] = _probe_logits(work / "home" / "models" / CHAT_MODEL / "model.gguf")
        # 2. images: the tiny LCM, 4 steps, fixed seeds
        t0 = time.perf_counter()
        for i, (prompt, seed) in enumerate(IMAGES):
            arrays[f"image{i}"] = np.asarray(rt.imagine(prompt, size="64x64", steps=4, seed=seed)[0].convert("RGB"))
        meta["seconds"]["image"] = round(time.perf_counter() - t0, 1)
        # 3. segmentation: three clicks on one photo (the first encodes it, the others reuse its embedding)
        t0 = time.perf_counter()
        photo = Image.open(work / "photo.png").convert("RGB")
        first = rt.segment(photo, points=CLICKS[0])
        results = [first] + [rt.segment(image_id=first.image_id, points=pts) for pts in CLICKS[1:]]
        for i, res in enumerate(results):
            arrays[f"masks{i}"] = np.stack([m.mask for m in res.masks])
            arrays[f"scores{i}"] = np.array([m.score for m in res.masks], dtype=np.float64)
        meta["seconds"]["segment"] = round(time.perf_counter() - t0, 1)
    np.savez(out, meta=np.array(json.dumps(meta)), **arrays)
    print(json.dumps(meta, indent=1))


def _probe_logits(gguf: Path) -> np.ndarray:
    """llama.cpp's logits at every position of PROBE (one forward pass, 2 threads)."""
    from llama_cpp import Llama

    llm = Llama(str(gguf), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    tokens = llm.tokenize(PROBE.encode(), add_bos=False, special=True)
    llm.eval(tokens)
    logits = np.array(llm.scores[:len(tokens)], dtype=np.float32)
    llm.close()
    return logits


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _logits_row(ref: np.ndarray, other: np.ndarray, torch_ref: np.ndarray) -> dict:
    """Both llama.cpp builds against transformers' fp32 forward of the same dequantized weights: the other
    build must be as close to it as the reference build (median |logit diff| per position within 1.5x, and
    the same greedy pick at as many positions). llama.cpp quantizes activations to 8 bits with each ISA's own
    kernels, so two builds differ from fp32, and from each other, by about the same amount."""
    def distance(x: np.ndarray) -> tuple[float, float, int]:
        d = np.abs(x - torch_ref).max(axis=1)
        return float(np.median(d)), float(d.max()), int((x.argmax(axis=1) == torch_ref.argmax(axis=1)).sum())

    (rmed, rmax, ragree), (omed, omax, oagree) = distance(ref), distance(other)
    between = np.abs(ref - other).max(axis=1)
    value = (f"{len(ref)} positions vs transformers fp32: reference median/max |diff| {rmed:.3f}/{rmax:.3f}, "
             f"same top-1 {ragree}; other {omed:.3f}/{omax:.3f}, same top-1 {oagree}; "
             f"between the builds median/max {np.median(between):.3f}/{between.max():.3f}")
    return {"output": "chat logits", "value": value, "ok": bool(omed <= 1.5 * rmed and oagree >= ragree),
            "reference_median": rmed, "other_median": omed, "between_max": float(between.max())}


def compare(ref_path: Path, other_path: Path, torch_path: Path) -> dict:
    """The other run against the reference, each output against its tolerance; ``ok`` when all hold."""
    ref, other = np.load(ref_path), np.load(other_path)
    rm, om = json.loads(str(ref["meta"])), json.loads(str(other["meta"]))
    rows = []
    for i, (a, b) in enumerate(zip(rm["chat"], om["chat"])):
        # reported, not held: greedy text follows the logits, which two ISAs' kernels round differently
        rows.append({"output": f"chat {i + 1} text", "value": "identical" if a == b else f"differs: {b!r} vs {a!r}",
                     "ok": None})
    rows.append(_logits_row(ref["probe_logits"], other["probe_logits"], np.load(torch_path)))
    for key in sorted(k for k in ref.files if k.startswith("image")):
        diff = int(np.abs(ref[key].astype(np.int16) - other[key].astype(np.int16)).max())
        rows.append({"output": key, "value": f"max diff {diff}/255 (tolerance {IMAGE_TOL_255})",
                     "ok": bool(ref[key].shape == other[key].shape and diff <= IMAGE_TOL_255 and ref[key].std() > 2)})
    for key in sorted(k for k in ref.files if k.startswith("masks")):
        scores = key.replace("masks", "scores")
        ious = [_iou(a, b) for a, b in zip(ref[key], other[key])] if ref[key].shape == other[key].shape else [0.0]
        dscore = float(np.abs(ref[scores] - other[scores]).max()) if ref[scores].shape == other[scores].shape else 1.0
        rows.append({"output": key, "value": f"min IoU {min(ious):.4f}, max score diff {dscore:.1e}",
                     "ok": bool(min(ious) >= MASK_MIN_IOU and dscore <= SCORE_ATOL
                                and all(0 < m.mean() < 1 for m in ref[key]))})  # neither empty nor full: the IoU means something
    return {"reference": rm["machine"], "other": om["machine"], "ok": all(r["ok"] is not False for r in rows), "rows": rows,
            "seconds": {rm["machine"]: rm["seconds"], om["machine"]: om["seconds"]}, "chat": om["chat"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare").add_argument("work", type=Path)
    r = sub.add_parser("run")
    r.add_argument("work", type=Path)
    r.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("ref", type=Path)
    c.add_argument("other", type=Path)
    c.add_argument("--torch", type=Path, help="transformers' probe logits (default: probe_torch.npy beside REF)")
    c.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.work)
    elif args.cmd == "run":
        run(args.work, args.out)
    else:
        result = compare(args.ref, args.other, args.torch or args.ref.parent / "probe_torch.npy")
        for row in result["rows"]:
            print(f"{ {True: 'ok  ', False: 'FAIL', None: 'info'}[row['ok']]} {row['output']}: {row['value']}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return 0 if result["ok"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
