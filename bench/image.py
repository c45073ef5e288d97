"""Image-generation benchmark: edge (onnxruntime fp32 / best precision, VAE / TAESD decoder) vs
diffusers LatentConsistencyModelPipeline (PyTorch CPU fp32), same run, same weights, same noise; and the
OpenVINO peer: OpenVINO running our exported fp32 graphs with its defaults (bf16 on CPUs with AVX-512 BF16 /
AMX, f32 otherwise), as FastSD CPU does, beside edge's own OpenVINO precision (int8-ov: the NNCF int8 UNet).

    python bench/image.py --random-init sd15 [--size 512] [--steps 4] [--threads 2] [--export-dir DIR]
                          [--best winograd,int8-winograd] [--openvino default,int8-ov | --openvino '']

The SD1.5-size LCM is exported once (cached in --export-dir) by the real recipe with seeded random
weights (speed does not depend on weight values). Every configuration runs in its own process so
its peak RSS (psutil, sampled every 5 ms) is its own: a warm-up at 256 px, 1 step, then the timed
run. All runs draw the same noise (torch.Generator(seed) for diffusers, the same draws replayed for
edge), so "max diff" is the output difference vs the edge fp32 image with the same decoder, in 1/255 units
(diffusers: vs edge fp32 VAE).

Targets (issue 4): edge >= 2x faster than diffusers torch CPU; peak RSS <= 2 GB for the best
precision with TAESD (stable-diffusion.cpp q8_0 needs 2.1 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "a lighthouse at dusk, oil painting"
TARGET_SPEEDUP = 2.0
TARGET_RSS = 2 * 1024**3
SD_CPP_Q8_RSS_GB = 2.1


class PeakRSS:
    """Peak resident set size of this process, sampled in a thread with psutil."""

    def __init__(self, every: float = 0.005):
        import psutil

        self.proc, self.every, self.peak = psutil.Process(), every, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


# ---------------------------------------------------------------------------------------------- workers
def replay_noise(draws: list[np.ndarray]):
    """A noise source replaying pre-drawn arrays in order (the torch.Generator draws diffusers makes)."""
    it = iter(draws)

    def draw(shape):
        arr = next(it)
        assert tuple(arr.shape) == tuple(shape), (arr.shape, shape)
        return arr

    return draw


def worker_edge(a) -> dict:
    """edge: numpy pipeline over onnxruntime sessions (no torch imported in this process)."""
    with PeakRSS() as rss:
        from edge.image.engine import components_from_manifest
        from edge.image.pipeline import ImageRequest, LCMPipeline
        from edge.manifest import read

        folder = Path(a.export_dir)
        manifest = read(folder, task="image")
        t0 = time.perf_counter()
        comps = components_from_manifest(manifest, folder, precision=a.precision, threads=a.threads, device=a.device)
        ov_precision = getattr(comps.unet.session, "edge_placement", {}).get("precision") if a.device != "cpu" else None
        pipe = LCMPipeline(comps)
        noise = np.load(a.noise)
        warm = ImageRequest(PROMPT, 256, 256, steps=1, seed=0, decoder=a.decoder)
        for _ in pipe.generate_steps(warm):  # also creates the decoder session
            pass
        load_s = time.perf_counter() - t0
        times: dict[str, list[float]] = {"text_encode": [], "unet": [], "decode": []}
        req = ImageRequest(PROMPT, a.size, a.size, steps=a.steps, seed=a.seed, decoder=a.decoder)
        gen = pipe.generate_steps(req, noise=[replay_noise([noise[k] for k in sorted(noise.files)])])
        start = last = time.perf_counter()
        try:
            while True:
                step = next(gen)
                now = time.perf_counter()
                times[step.kind].append(now - last)
                last = now
        except StopIteration as stop:
            image = np.asarray(stop.value[0])
        total = time.perf_counter() - start
    np.save(a.image_out, image)
    return {"load_s": load_s, "text_s": sum(times["text_encode"]), "unet_s": float(np.mean(times["unet"])),
            "decode_s": sum(times["decode"]), "total_s": total, "peak_rss": rss.peak, "ov_precision": ov_precision}


def worker_torch(a) -> dict:
    """diffusers LatentConsistencyModelPipeline, PyTorch CPU fp32, the same random weights."""
    with PeakRSS() as rss:
        import torch

        from export.lcm.reference import diffusers_pipeline
        from export.lcm.sources import random_components

        torch.set_num_threads(a.threads)
        t0 = time.perf_counter()
        src = random_components(a.random_init, a.weights_seed)  # exactly the exported weights (same seed, same order)
        pipe = diffusers_pipeline(src, Path(a.export_dir) / "tokenizer")
        times: dict[str, list[float]] = {"text": [], "unet": [], "decode": []}

        def timed(name, fn):
            def wrapper(*args, **kw):
                t = time.perf_counter()
                out = fn(*args, **kw)
                times[name].append(time.perf_counter() - t)
                return out
            return wrapper

        with torch.inference_mode():
            pipe(PROMPT, num_inference_steps=1, height=256, width=256, generator=torch.Generator().manual_seed(0))
        load_s = time.perf_counter() - t0
        pipe.text_encoder.forward = timed("text", pipe.text_encoder.forward)
        pipe.unet.forward = timed("unet", pipe.unet.forward)
        pipe.vae.decode = timed("decode", pipe.vae.decode)
        start = time.perf_counter()
        with torch.inference_mode():
            out = pipe(PROMPT, num_inference_steps=a.steps, height=a.size, width=a.size, guidance_scale=8.0,
                       generator=torch.Generator().manual_seed(a.seed), output_type="np").images[0]
        total = time.perf_counter() - start
    np.save(a.image_out, (out * 255).round().astype(np.uint8))
    return {"load_s": load_s, "text_s": sum(times["text"]), "unet_s": float(np.mean(times["unet"])),
            "decode_s": sum(times["decode"]), "total_s": total, "peak_rss": rss.peak}


# ---------------------------------------------------------------------------------------------- parent
def ensure_export(a) -> Path:
    folder = Path(a.export_dir)
    if (folder / "edge-model.json").exists():
        return folder
    from export.recipes import lcm_onnx

    cfg = lcm_onnx.Config(random_init=a.random_init, out=folder, precisions=a.precisions, verify_size=256,
                          seed=a.weights_seed)
    print(f"exporting {a.random_init} to {folder} (once) ...", file=sys.stderr)
    return lcm_onnx.run(cfg)


def ensure_precision(folder: Path, precision: str) -> None:
    """Add a reduced precision to a cached export that lacks it, made from its fp32 files by the recipe's own
    make_precision (this bench measures its output difference vs fp32 itself)."""
    from export.artifacts import file_table, write_json
    from export.lcm.precisions import QUANTIZED, make_precision, shared_component

    manifest = json.loads((folder / "edge-model.json").read_text())
    if precision in manifest["precisions"]:
        return
    if precision == "qdq":
        raise SystemExit("cannot add qdq here (it needs calibration); re-export with --precisions")
    calibration = (lambda: unet_calibration(folder)) if precision == "int8-ov" else None
    print(f"adding precision {precision} to {folder} ...", file=sys.stderr, flush=True)
    (folder / precision).mkdir(exist_ok=True)
    table = dict(manifest["precisions"]["fp32"])
    side, scale = int(manifest["default_size"]), int(manifest["vae"]["scale_factor"])
    for name in QUANTIZED[precision]:
        if shared := shared_component(precision, name, manifest["precisions"]):
            table[name] = shared
        elif name in table:
            written = make_precision(precision, name, folder / table[name], folder / precision / f"{name}.onnx",
                                     winograd_side=side, vae_scale=scale, calibration=calibration)
            table[name] = Path(written).relative_to(folder).as_posix()
    manifest["precisions"][precision] = table
    manifest["files"] = file_table(folder)
    write_json(folder / "edge-model.json", manifest)


def unet_calibration(folder: Path, side: int = 256, steps: int = 2) -> list[dict]:
    """The UNet inputs the fp32 export's pipeline sees rendering the recipe's calibration prompts at the recipe's
    verification size (what export.lcm.calibrate records during `edge-run export lcm`, without the PyTorch source)."""
    from edge.image.engine import components_from_manifest
    from edge.image.pipeline import ImageRequest, LCMPipeline
    from edge.manifest import read
    from export.lcm.verify import VERIFY_PROMPT

    comps = components_from_manifest(read(folder, task="image"), folder, precision="fp32", threads=2, device="cpu")
    recorded: list[dict] = []
    unet = comps.unet
    comps.unet = lambda **feeds: (recorded.append({k: np.array(v) for k, v in feeds.items()}), unet(**feeds))[1]
    pipe = LCMPipeline(comps)
    for i, prompt in enumerate((VERIFY_PROMPT, "a red car in the rain", "portrait of an old fisherman")):
        gen = pipe.generate_steps(ImageRequest(prompt, side, side, steps=steps, seed=i))
        for step in gen:
            if step.kind == "unet" and step.data.get("step") == step.data.get("steps"):
                gen.close()
                break
    return recorded


def draw_noise(a, path: Path) -> None:
    """The draws diffusers makes from torch.Generator(seed): initial latents, then one per step but the last."""
    import torch

    g = torch.Generator().manual_seed(a.seed)
    lat = a.size // 8
    draws = {f"d{i:02d}": torch.randn((1, 4, lat, lat), generator=g).numpy() for i in range(a.steps)}
    np.savez(path, **draws)


def run_worker(kind: str, a, tmp: Path, **extra) -> dict:
    name = "-".join([kind] + [str(v) for v in extra.values()])
    cmd = [sys.executable, __file__, "--worker", kind, "--export-dir", str(a.export_dir), "--size", str(a.size),
           "--steps", str(a.steps), "--threads", str(a.threads), "--seed", str(a.seed), "--noise", str(tmp / "noise.npz"),
           "--image-out", str(tmp / f"{name}.npy"), "--random-init", a.random_init,
           "--weights-seed", str(a.weights_seed)]
    for k, v in extra.items():
        cmd += [f"--{k}", str(v)]
    print(f"running {name} ...", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["image"] = np.load(tmp / f"{name}.npy")
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--random-init", default="sd15", choices=("sd15", "tiny"))
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--weights-seed", type=int, default=0)
    p.add_argument("--precisions", default="fp32,int8", help="precisions to export (once)")
    p.add_argument("--best", default="winograd,int8-winograd",
                   help="comma list of the other precisions to compare with fp32 [winograd,int8-winograd]; the "
                        "RSS target applies to the last")
    p.add_argument("--openvino", default="default,int8-ov",
                   help="OpenVINO rows: default = the peer (OpenVINO's default precision on our fp32 graphs, as FastSD "
                        "CPU runs it), int8-ov = edge's NNCF int8 UNet IR on OpenVINO (added to the export once); '' "
                        "= none [default,int8-ov]")
    p.add_argument("--export-dir", default=None)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    # worker mode (internal)
    p.add_argument("--worker", choices=("edge", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--decoder", default="vae", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--noise", help=argparse.SUPPRESS)
    p.add_argument("--image-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.export_dir = a.export_dir or str(Path.home() / ".cache" / "edge-run-bench" / f"lcm-{a.random_init}-random")

    if a.worker:
        res = worker_edge(a) if a.worker == "edge" else worker_torch(a)
        print(json.dumps(res))
        return 0

    import tempfile

    ensure_export(a)
    bests = [b.strip() for b in a.best.split(",") if b.strip()]
    ov_rows = [o.strip() for o in a.openvino.split(",") if o.strip()]
    if ov_rows:
        from edge.ov_session import version

        if version() is None:
            print("openvino is not installed (pip install openvino nncf): no OpenVINO rows", file=sys.stderr)
            ov_rows = []
    for b in bests + [o for o in ov_rows if o != "default"]:
        ensure_precision(Path(a.export_dir), b)
    with tempfile.TemporaryDirectory(prefix="bench-image-") as t:
        tmp = Path(t)
        draw_noise(a, tmp / "noise.npz")
        runs = {f"edge ORT {p}, {d.upper() if d == 'vae' else 'TAESD'}": run_worker("edge", a, tmp, precision=p, decoder=d)
                for d in ("vae", "taesd") for p in ["fp32", *bests]}
        for o in ov_rows:  # the peer: OpenVINO's defaults on our fp32 graphs; ours: int8-ov, everything on OpenVINO
            for d in ("vae", "taesd"):
                r = run_worker("edge", a, tmp, precision="fp32" if o == "default" else o, decoder=d, device="openvino")
                who = f"OpenVINO default ({r['ov_precision']}) fp32 graphs" if o == "default" else f"edge OV {o}"
                runs[f"{who}, {d.upper() if d == 'vae' else 'TAESD'}"] = r
        if not a.skip_torch:
            runs["diffusers torch fp32, VAE"] = run_worker("torch", a, tmp)
    ref = runs["edge ORT fp32, VAE"]["image"]
    peer = runs.get("diffusers torch fp32, VAE")
    from bench._common import table

    rows = []
    for name, r in runs.items():  # diff vs the edge fp32 run with the same decoder
        base = runs["edge ORT fp32, TAESD" if "TAESD" in name else "edge ORT fp32, VAE"]["image"]
        d = np.abs(r["image"].astype(np.int16) - base.astype(np.int16))
        rows.append([name, f"{r['text_s'] * 1e3:.0f}", f"{r['unet_s']:.2f}", f"{r['decode_s']:.2f}",
                     f"{r['total_s']:.2f}", f"{r['peak_rss'] / 2**30:.2f}", int(d.max()), f"{d.mean():.2f}",
                     f"{peer['total_s'] / r['total_s']:.2f}x" if peer else "-"])
    print(f"\nLCM {a.random_init} (random weights), {a.size}x{a.size}, {a.steps} steps, {a.threads} threads, "
          f"onnxruntime vs diffusers (torch {_torch_version()}) on CPU\n")
    print(table(["run", "text enc ms", "UNet s/step", "decode s", "total s", "peak RSS GB", "max diff /255 vs fp32",
                 "mean diff", "speed vs torch"], rows))
    _print_openvino(runs)
    if peer:
        best = runs[f"edge ORT {bests[-1]}, TAESD"] if bests else runs["edge ORT fp32, TAESD"]
        fastest = min(runs[k]["total_s"] for k in runs if k.startswith("edge"))
        print(f"\nfastest edge vs diffusers: {peer['total_s'] / fastest:.2f}x (target >= {TARGET_SPEEDUP}x); "
              f"edge fp32 VAE vs diffusers: {peer['total_s'] / runs['edge ORT fp32, VAE']['total_s']:.2f}x; "
              f"diffusers image vs edge fp32: max diff {int(np.abs(peer['image'].astype(int) - ref).max())}/255")
        print(f"peak RSS {bests[-1] if bests else 'fp32'} + TAESD: {best['peak_rss'] / 2**30:.2f} GB (target <= 2 GB; "
              f"stable-diffusion.cpp q8_0 needs {SD_CPP_Q8_RSS_GB} GB)")
        _print_taesd_target(a, runs, peer)
        _print_roofline(a, runs["edge ORT fp32, TAESD"], peer, runs)
    if a.json:
        Path(a.json).write_text(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "image"}
                                            for k, v in runs.items()}, indent=1))
    return 0


TARGET_VS_OPENVINO = 1.2  # issue 21: our best UNet step >= 1.2x faster than OpenVINO's best on the same graph and CPU


def _print_openvino(runs: dict) -> None:
    """Our fastest UNet step (any edge row: onnxruntime precisions, int8-ov on OpenVINO) against the OpenVINO peer's."""
    peer = {k: r for k, r in runs.items() if k.startswith("OpenVINO")}
    if not peer:
        return
    ours = {k: r for k, r in runs.items() if k.startswith("edge")}
    pk = min(peer, key=lambda k: peer[k]["unet_s"])
    ok = min(ours, key=lambda k: ours[k]["unet_s"])
    ratio = peer[pk]["unet_s"] / ours[ok]["unet_s"]
    print(f"\nUNet step vs the OpenVINO peer: ours {ours[ok]['unet_s']:.2f} s ({ok.rsplit(',', 1)[0]}) vs OpenVINO "
          f"{peer[pk]['unet_s']:.2f} s ({pk.rsplit(',', 1)[0]}): {ratio:.2f}x (target >= {TARGET_VS_OPENVINO}x: "
          f"{'MET' if ratio >= TARGET_VS_OPENVINO else 'MISSED'})")


TARGET_TAESD_SPEEDUP = 3.0  # issue 21: a 4-step 512x512 image with TAESD >= 3x diffusers, peak RSS <= 2 GB


def _print_taesd_target(a, runs: dict, peer: dict) -> None:
    """Our fastest TAESD run (any backend) against diffusers, with its own peak RSS."""
    taesd = {k: r for k, r in runs.items() if k.startswith("edge") and k.endswith("TAESD")}
    if not taesd:
        return
    k = min(taesd, key=lambda n: taesd[n]["total_s"])
    speed, rss = peer["total_s"] / taesd[k]["total_s"], taesd[k]["peak_rss"] / 2**30
    print(f"{a.steps}-step {a.size}x{a.size} image with TAESD, fastest edge run ({k.rsplit(',', 1)[0]}): "
          f"{taesd[k]['total_s']:.2f} s = {speed:.2f}x diffusers (target >= {TARGET_TAESD_SPEEDUP}x: "
          f"{'MET' if speed >= TARGET_TAESD_SPEEDUP else 'MISSED'}), peak RSS {rss:.2f} GB (target <= "
          f"{TARGET_RSS / 2**30:.0f} GB: {'MET' if taesd[k]['peak_rss'] <= TARGET_RSS else 'MISSED'})")


def _print_roofline(a, edge: dict, peer: dict, runs: dict) -> None:
    """The UNet's matrix products at this machine's best GEMM rate: the fastest a step can be, and the
    best speed-up over diffusers that leaves (text encoder and TAESD as measured)."""
    from bench.roofline import gemm_rate, total_macs

    lat = a.size // 8
    macs = total_macs(Path(a.export_dir) / "fp32" / "unet.onnx", {"sample": [1, 4, lat, lat], "timestep_cond": [1, 256]})
    rate = gemm_rate(a.threads)
    floor = macs / rate
    best_total = edge["text_s"] + a.steps * floor + edge["decode_s"]
    print(f"roofline: UNet {macs / 1e9:.0f} GMAC per step; best fp32 GEMM rate here {rate / 1e9:.1f} GMAC/s "
          f"(onnxruntime, {a.threads} threads) -> >= {floor:.2f} s/step; edge measured {edge['unet_s']:.2f} s "
          f"({floor / edge['unet_s']:.0%} of that rate), torch {peer['unet_s']:.2f} s; a UNet at the GEMM rate "
          f"would give at most {peer['total_s'] / best_total:.2f}x over diffusers; "
          f"{TARGET_SPEEDUP}x needs <= {(peer['total_s'] / TARGET_SPEEDUP - edge['text_s'] - edge['decode_s']) / a.steps:.2f} s/step")
    wino = Path(a.export_dir) / "winograd" / "unet.onnx"
    if wino.exists() and "edge ORT winograd, TAESD" in runs:
        wmacs = total_macs(wino, {"sample": [1, 4, lat, lat], "timestep_cond": [1, 256]})
        w = runs["edge ORT winograd, TAESD"]
        print(f"roofline, winograd UNet: {wmacs / 1e9:.0f} GMAC of products per step ({1 - wmacs / macs:.0%} fewer) "
              f"-> >= {wmacs / rate:.2f} s/step; measured {w['unet_s']:.2f} s ({wmacs / rate / w['unet_s']:.0%})")


def _torch_version() -> str:
    try:
        from importlib.metadata import version

        return version("torch")
    except Exception:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
