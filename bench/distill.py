"""Distillation benchmark: longer runs of the three recipes on tiny teachers than the tests afford,
with a peer baseline in the same run, learning curves saved as a PNG.

    python bench/distill.py [--recipes lcm,llm-kd,sam-encoder] [--scale 1] [--threads 2] [--out DIR]

Per recipe (the teacher is built first, outside the timing):
  lcm          student 2/4-step LCM vs teacher 50-step DDIM (latent MSE), before / after; peer: the
               teacher's own DDIM at the same 2/4 steps (what you get without distillation); also the
               error of an exact-ODE student (LCM sampling with the teacher's ODE as consistency
               function: the noise LCM injects between steps keeps even a perfect student off DDIM-50)
  llm-kd       held-out KL to the teacher and perplexity, before / after; peer: the same pruned student
               trained the same steps on the text alone (next-token loss, no teacher)
  sam-encoder  embedding MSE and mask IoU vs the teacher, before / after; peer: the teacher encoder's
               latency vs the student's (PyTorch CPU)
``--scale`` multiplies the step counts (1 = a few minutes per recipe on 2 cores). The curves (loss and
held-out metrics against steps) go to ``<out>/distill_curves.png``; every report stays in ``<out>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import table  # noqa: E402


def _run(module, out: Path, **kw) -> dict:
    from export.distill.common import config_from_args

    cfg = config_from_args(module.Config, out=str(out), overwrite=True, no_progress=False, **kw)
    module.run(cfg)
    rep = json.loads((out / "distill-report.json").read_text())
    rep["history"] = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x.strip()]
    return rep


def bench_lcm(work: Path, scale: float, threads: int) -> tuple[list[list], dict]:
    import torch

    from export.distill import lcm as L
    from export.distill.teachers import PROMPT_FOLLOWING, sd_teacher

    # the tests' teacher (it follows its prompts; see teachers.PROMPT_FOLLOWING) and config, here measured on
    # 16 held-out prompts (the tests: 8) with the held-out curve every 1/8 of the run
    params = dict(PROMPT_FOLLOWING, train_steps=int(PROMPT_FOLLOWING["train_steps"] * scale))
    teacher = sd_teacher(work / "sd-teacher", **params)["path"]
    steps = int(300 * scale)
    rep = _run(L, work / "lcm-student", config=str(CONFIGS / "lcm-tiny.toml"), teacher=str(teacher), steps=steps,
               eval_prompts=16, eval_every=max(1, steps // 8), threads=threads)
    # peer: the teacher's own DDIM at the same few steps, same noise and guidance, vs its 50-step samples
    pipe = L.load_teacher(teacher)
    cfg = rep["config"]
    side = cfg["resolution"] // 8
    ev = L.Evaluator(pipe, rep["data"]["held_out_prompts"], (4, side, side), [2, 4], cfg["eval_guidance"],
                     cfg["teacher_steps"], cfg["seed"] + 1)
    rows = []
    for n in (2, 4):
        k = f"latent_mse_{n}step"
        peer = float(((L.teacher_samples(pipe, ev.prompts, ev.latents, n, ev.guidance) - ev.reference) ** 2).mean())
        # what a perfect student (the teacher's exact ODE as consistency function) gets with LCM's sampling
        exact = rep["after"].get(f"floor_{k}", float("nan"))
        rows.append(["lcm", f"{k} vs DDIM-50", rep["before"][k], rep["after"][k], rep["after"][k] / rep["before"][k],
                     f"teacher DDIM-{n}: {peer:.3g}; exact-ODE student: {exact:.3g}", rep["after"][k] / peer])
    torch.set_num_threads(threads)
    return rows, rep


def bench_llm(work: Path, scale: float, threads: int) -> tuple[list[list], dict]:
    from export.distill import llm_kd
    from export.distill.teachers import llm_teacher

    teacher = llm_teacher(work / "llm-teacher", steps=int(400 * scale), batch=16, lr=5e-3)["path"]
    steps = int(300 * scale)
    common = dict(config=str(CONFIGS / "llm-kd-tiny.toml"), teacher=str(teacher), steps=steps,
                  eval_every=max(1, steps // 10), threads=threads)
    rep = _run(llm_kd, work / "llm-student", **common)
    peer = _run(llm_kd, work / "llm-student-ce-only", ce_weight=1.0, **common)
    rows = []
    for k in ("kl", "perplexity", "top1_agreement"):
        rows.append(["llm-kd", k, rep["before"][k], rep["after"][k], rep["after"][k] / rep["before"][k],
                     f"text-only training: {peer['after'][k]:.4g}", rep["after"][k] / peer["after"][k]])
    rep["peer_history"] = peer["history"]
    return rows, rep


def bench_sam(work: Path, scale: float, threads: int) -> tuple[list[list], dict]:
    import numpy as np
    import torch

    from export.distill import sam_encoder as S
    from export.distill.sam_arch import load_sam
    from export.distill.teachers import sam_teacher

    teacher = sam_teacher(work / "sam-teacher.pt")
    steps = int(40 * scale)
    rep = _run(S, work / "sam-student", config=str(CONFIGS / "sam-encoder-tiny.toml"), teacher=str(teacher),
               steps=steps, num_images=max(4, int(12 * scale)), held_out_images=3, eval_every=max(1, steps // 5),
               threads=threads)
    torch.set_num_threads(threads)
    x = torch.from_numpy(S.encoder_input(np.zeros((480, 640, 3), np.uint8)))
    lat = {}
    for name, path in (("teacher", teacher), ("student", work / "sam-student" / S.CHECKPOINT)):
        enc = load_sam(path).image_encoder
        with torch.no_grad():
            enc(x)
            t0 = time.perf_counter()
            for _ in range(3):
                enc(x)
        lat[name] = (time.perf_counter() - t0) / 3 * 1e3
    rows = [["sam-encoder", "embedding_mse", rep["before"]["embedding_mse"], rep["after"]["embedding_mse"],
             rep["after"]["embedding_mse"] / rep["before"]["embedding_mse"], "", ""],
            ["sam-encoder", "mask_iou", rep["before"]["mask_iou"], rep["after"]["mask_iou"],
             rep["after"]["mask_iou"] / rep["before"]["mask_iou"], "", ""],
            ["sam-encoder", "encoder ms (torch CPU)", lat["teacher"], lat["student"], lat["student"] / lat["teacher"],
             f"teacher: {lat['teacher']:.0f} ms", lat["student"] / lat["teacher"]]]
    return rows, rep


CONFIGS = Path(__file__).resolve().parent.parent / "export" / "distill" / "configs"
BENCHES = {"lcm": bench_lcm, "llm-kd": bench_llm, "sam-encoder": bench_sam}
CURVES = {"lcm": ["latent_mse_2step", "latent_mse_4step"], "llm-kd": ["kl", "perplexity"],
          "sam-encoder": ["embedding_mse", "mask_iou"]}


def plot(reports: dict[str, dict], path: Path) -> None:
    """One column per recipe: the training loss (top) and the held-out metrics (bottom) against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(reports), figsize=(5 * len(reports), 7), squeeze=False)
    for col, (name, rep) in enumerate(reports.items()):
        hist = rep["history"]
        loss = [(h["step"], h["loss"]) for h in hist if "loss" in h]
        ax = axes[0][col]
        ax.plot(*zip(*loss), label="distillation loss")
        if rep.get("peer_history"):
            peer = [(h["step"], h["loss"]) for h in rep["peer_history"] if "loss" in h]
            ax.plot(*zip(*peer), label="text-only loss (peer)", alpha=0.7)
        ax.set_title(f"{name}: training loss")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend()
        evals = [(0, rep["before"])] + [(h["step"], h["eval"]) for h in hist if "eval" in h]
        ax = axes[1][col]
        for k in CURVES[name]:
            ax.plot([s for s, _ in evals], [e[k] for _, e in evals], marker="o", label=k)
        ax.set_title(f"{name}: held-out metrics")
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", default="lcm,llm-kd,sam-encoder")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the step counts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="folder for the reports and the PNG (default: a temp dir)")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="edge-distill-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)
    rows, reports = [], {}
    for name in [r.strip() for r in args.recipes.split(",") if r.strip()]:
        t0 = time.perf_counter()
        r, rep = BENCHES[name](work / name, args.scale, args.threads)
        rows += r
        reports[name] = rep
        print(f"{name}: {time.perf_counter() - t0:.0f} s (training {rep['train_seconds']:.0f} s)", flush=True)
    print(table(["recipe", "metric", "before", "after", "after/before", "peer", "after/peer"], rows))
    png = work / "distill_curves.png"
    plot(reports, png)
    (work / "bench_distill.json").write_text(json.dumps({"rows": rows}, indent=1, default=str))
    print(f"curves: {png}\nreports: {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
