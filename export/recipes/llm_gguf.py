"""Chat model (Hugging Face folder or hub id) -> GGUF files for llama.cpp, verified against transformers.

    edge-run export llm SOURCE --to gguf --quant q8_0,q4_k_m --out DIR [--add --id NAME]
    edge-run export llm --random-init tiny-llama --quant f32,q8_0 --out DIR
    edge-run export llm SOURCE --to onnx --quant int4 --out DIR     (same as `export llm-onnx`)

Architectures: LlamaForCausalLM (Llama 1/2/3, SmolLM, SmolLM2, TinyLlama) and Qwen2ForCausalLM (Qwen2,
Qwen2.5). f32/f16 are written here with the ``gguf`` package; q8_0, q6_k, q5_k_m, q4_k_m, q4_0 by
llama.cpp's own quantizer from the f32 file. Output folder: ``model.<quant>.gguf`` per quant,
``report.json`` (llama.cpp logits vs transformers on a fixed sequence: max abs diff, top-1 agreement,
mean KL; perplexity on a public-domain text; tokenizer agreement) and ``edge-model.json``.
Everything is written to a temp folder and moved into place only after verification passed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

HELP = "chat model (HF folder / hub id) -> GGUF f32/f16/q8_0/q4_k_m/... via llama.cpp's quantizer, verified"
# verification gates: the artifact is written only if these hold (quants below f16 are reported, not gated)
MIN_TOP1 = {"f32": 0.98, "f16": 0.95}


def _add(parser: argparse.ArgumentParser, *flags: str, **kw: Any) -> None:
    if any(f in parser._option_string_actions for f in flags):  # noqa: SLF001
        return
    parser.add_argument(*flags, **kw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from export.llm.gguf_file import QUANTS
    from export.llm.source import PRESETS

    _add(parser, "source", nargs="?", default=None, help="Hugging Face model folder or hub id")
    _add(parser, "--random-init", choices=PRESETS, default=None, help="seeded random model instead of a source")
    _add(parser, "--seed", type=int, default=0, help="seed for --random-init (default 0)")
    _add(parser, "--to", choices=("gguf", "onnx"), default="gguf", help="gguf (llama.cpp) or onnx (llm-onnx recipe)")
    _add(parser, "--quant", default=None,
         help=f"comma-separated quant types; gguf: {', '.join(QUANTS)} (default q8_0,q4_k_m); onnx: fp32, int8, "
              "int4 (default int4)")
    _add(parser, "--out", "-o", required=True, help="output folder (written atomically)")
    _add(parser, "--overwrite", action="store_true", help="replace an existing output folder")
    _add(parser, "--add", action="store_true", help="install each file into the store and models.lock")
    _add(parser, "--id", dest="model_id", default=None, help="model id prefix for --add (default: folder name)")


def _threads(args) -> int:
    try:
        return max(1, int(getattr(args, "threads", None) or os.cpu_count() or 2))
    except ValueError:
        return os.cpu_count() or 2


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in list(folder.glob("*.safetensors")) + list(folder.glob("pytorch_model*.bin")))


def check_disk(where: Path, n_params: int, quants: list[str]) -> None:
    """Refuse up front when the output's file system cannot hold the f32 base plus every output."""
    from edge.errors import BadRequest
    from export.llm.gguf_file import BITS

    need = n_params * 4 + sum(n_params * BITS[q] / 8 for q in quants if q != "f32") + (64 << 20)
    probe = where
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise BadRequest(f"not enough disk at {str(probe)!r}: the export needs about {need / 2**20:.0f} MiB "
                         f"(f32 base + {', '.join(quants)}), {free / 2**20:.0f} MiB free. Free space or choose "
                         "another --out.", param="out")


def run(args: argparse.Namespace) -> Path:
    """check -> source -> f32 GGUF -> llama.cpp quantize -> verify vs transformers -> write atomically."""
    from edge.errors import BadRequest
    from export.artifacts import MANIFEST, ArtifactDir, file_table, write_json
    from export.llm import check, gguf_file, source as S
    from export.verify import write_report

    if getattr(args, "to", "gguf") == "onnx":
        from export.recipes import llm_onnx
        return llm_onnx.run(args)

    # 1. check inputs
    quants = gguf_file.parse_quants(args.quant or "q8_0,q4_k_m")
    if (args.source is None) == (args.random_init is None):
        raise BadRequest("give exactly one source: a Hugging Face model folder / hub id, or --random-init "
                         f"{'|'.join(S.PRESETS)}.", param="source")
    threads = _threads(args)
    out = Path(args.out).absolute()
    src = None
    if args.source is not None:
        src = S.check_source(S.resolve(args.source))
        check_disk(out.parent, _weights_bytes(src.folder) // 2, quants)  # >= n_params (bf16/f16 sources)
    t0 = time.perf_counter()

    with ArtifactDir(out, overwrite=args.overwrite) as tmp:
        # 2. source (random init writes an HF folder inside the temp folder)
        if src is None:
            src = S.random_init(args.random_init, tmp / ".source", seed=args.seed)

        # 3. f32 base (and f16) with the gguf package
        base = tmp / ".model.f32.gguf"
        info = gguf_file.write_gguf(src, base, "f32")
        files: dict[str, Path] = {}
        if "f32" in quants:
            files["f32"] = tmp / "model.f32.gguf"
            shutil.copyfile(base, files["f32"])
        if "f16" in quants:
            files["f16"] = tmp / "model.f16.gguf"
            gguf_file.write_gguf(src, files["f16"], "f16")

        # 4. quantize with llama.cpp
        for q in quants:
            if q not in files:
                files[q] = tmp / f"model.{q}.gguf"
                gguf_file.quantize(base, files[q], q, threads)
        files = {q: files[q] for q in quants}
        base.unlink()

        # 5. verify against transformers
        model = S.load_torch_model(src)
        report = check.verify_gguf(src, model, files, threads)
        del model
        gates = {q: MIN_TOP1[q] for q in quants if q in MIN_TOP1}
        failed = [q for q, t in gates.items() if report["quants"][q]["top1_agreement"] < t]
        passed = not failed and report["tokenizer"]["match"]
        report.update({"kind": "llm_gguf_vs_transformers", "passed": passed, "thresholds": {"min_top1": gates},
                       "source": src.origin, "architecture": src.hf_arch, "gguf_arch": src.arch,
                       "tokenizer_written": info["tokenizer"], "n_params": info["n_params"],
                       "export_s": round(time.perf_counter() - t0, 1)})
        write_report(tmp, report)
        if not passed:
            why = f"top-1 below threshold for {failed}" if failed else "llama.cpp tokenizes differently from the HF tokenizer"
            raise BadRequest(f"verification failed: {why}; nothing was written. Summary: "
                             f"{ {q: round(r['top1_agreement'], 4) for q, r in report['quants'].items()} }",
                             param="source")
        shutil.rmtree(tmp / ".source", ignore_errors=True)

        # 6. manifest
        write_json(tmp / MANIFEST, {
            "task": "chat", "format": "gguf", "recipe": "llm", "architecture": src.hf_arch, "source": src.origin,
            "quants": {q: p.name for q, p in files.items()}, "files": file_table(tmp),
            "verify": {q: {k: r[k] for k in ("max_abs_diff", "top1_agreement", "mean_kl", "perplexity")}
                       for q, r in report["quants"].items()}})
    _print_summary(out, report)
    if getattr(args, "add", False):  # 7. install each quant into the store and pin it in the user lock
        _install(args, out, files, src)
    return out


def _print_summary(out: Path, report: dict) -> None:
    rows = ", ".join(f"{q}: top1 {r['top1_agreement']:.3f} KL {r['mean_kl']:.2e} ppl {r['perplexity']:.2f}"
                     for q, r in report["quants"].items())
    print(f"llm: wrote {out}; vs transformers (ppl {report['reference_perplexity']:.2f}): {rows}")


def _install(args, out: Path, files: dict[str, Path], src) -> None:
    import tempfile

    from edge.cli import settings_from_args
    from edge.registry import add_local_model

    prefix = args.model_id or out.name
    for q in files:
        with tempfile.TemporaryDirectory(dir=out.parent) as stage:  # the GGUF engine loads a folder's one file
            os.link(out / f"model.{q}.gguf", Path(stage) / "model.gguf")
            model_id = f"{prefix}-{q}" if len(files) > 1 or not args.model_id else prefix
            add_local_model(settings_from_args(args), stage, model_id=model_id, task="chat", fmt="gguf",
                            license=str(src.config.get("license", "unknown")),
                            source={"recipe": "llm", "quant": q}, description=HELP)
        print(f"llm: installed {q} as {model_id!r} (edge-run chat --model {model_id})")


def main(argv: list[str] | None = None) -> int:
    from edge.errors import EdgeError

    parser = argparse.ArgumentParser(prog="python -m export.recipes.llm_gguf", description=HELP)
    add_arguments(parser)
    parser.add_argument("--threads", default=None, help="threads for quantization and verification")
    args = parser.parse_args(argv)
    try:
        run(args)
    except EdgeError as e:
        print(f"llm: error: {e.message}")
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
