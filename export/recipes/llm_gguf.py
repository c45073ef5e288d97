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

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from export.llm.gguf_file import QUANTS
from export.llm.source import PRESETS
from export.recipes import _common
from export.recipes._common import RecipeConfig, option, random_init_option, source_option

HELP = "chat model (HF folder / hub id) -> GGUF f32/f16/q8_0/q4_k_m/... via llama.cpp's quantizer, verified"
# verification gates: the artifact is written only if these hold (quants below f16 are reported, not gated)
MIN_TOP1 = {"f32": 0.98, "f16": 0.95}


@dataclass
class Config(RecipeConfig):
    """The options of `edge-run export llm` (each is also a flag); threads come from ``settings``."""

    source: str | None = source_option("Hugging Face model folder or hub id")
    random_init: str | None = random_init_option(PRESETS, "seeded random model instead of a source")
    seed: int = option("--seed", default=0, type=int, help="seed for --random-init (default 0)")
    to: str = option("--to", default="gguf", choices=("gguf", "onnx"),
                     help="gguf (llama.cpp) or onnx (llm-onnx recipe)")
    quant: str | None = option("--quant", help=f"comma-separated quant types; gguf: {', '.join(QUANTS)} (default "
                                               "q8_0,q4_k_m); onnx: fp32, int8, int4 (default int4)")
    out: str | None = option("--out", "-o", required=True, help="output folder (written atomically)")
    overwrite: bool = option("--overwrite", default=False, action="store_true",
                             help="replace an existing output folder")
    add: bool = option("--add", default=False, action="store_true",
                       help="install each file into the store and models.lock")
    model_id: str | None = option("--id", help="model id prefix for --add (default: folder name)")


def run(cfg: Config) -> Path:
    """check -> source -> f32 GGUF -> llama.cpp quantize -> verify vs transformers -> write atomically."""
    from edge.errors import BadRequest
    from edge.manifest import ChatManifest, write
    from export.artifacts import ArtifactDir, file_table
    from export.llm import check, gguf_file, source as S
    from export.llm.disk import check_disk, weights_bytes
    from export.verify import write_report

    cfg = _common.typed(Config, cfg)
    if cfg.to == "onnx":
        from export.recipes import llm_onnx

        shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(llm_onnx.Config)}
        return llm_onnx.run(llm_onnx.Config(**shared))

    # 1. check inputs
    quants = gguf_file.parse_quants(cfg.quant or "q8_0,q4_k_m")
    src = S.one_source(cfg.source, cfg.random_init)
    threads = cfg.settings.threads
    out = Path(cfg.out).absolute()
    if src is not None:
        check_disk(out.parent, weights_bytes(src.folder) // 2, quants)  # >= n_params (bf16/f16 sources)
    t0 = time.perf_counter()

    with ArtifactDir(out, overwrite=cfg.overwrite) as tmp:
        # 2. source (random init writes an HF folder inside the temp folder)
        if src is None:
            src = S.random_init(cfg.random_init, tmp / ".source", seed=cfg.seed)

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
        write(tmp, ChatManifest(
            format="gguf", recipe="llm", architecture=src.hf_arch, source=src.origin,
            quants={q: p.name for q, p in files.items()}, files=file_table(tmp),
            verify={q: {k: r[k] for k in ("max_abs_diff", "top1_agreement", "mean_kl", "perplexity")}
                    for q, r in report["quants"].items()}))
    _print_summary(out, report)
    if cfg.add:  # 7. install each quant into the store and pin it in the user lock
        _install(cfg, out, files, src)
    return out


def _print_summary(out: Path, report: dict) -> None:
    rows = ", ".join(f"{q}: top1 {r['top1_agreement']:.3f} KL {r['mean_kl']:.2e} ppl {r['perplexity']:.2f}"
                     for q, r in report["quants"].items())
    print(f"llm: wrote {out}; vs transformers (ppl {report['reference_perplexity']:.2f}): {rows}")


def _install(cfg: Config, out: Path, files: dict[str, Path], src) -> None:
    import tempfile

    prefix = cfg.model_id or out.name
    for q in files:
        with tempfile.TemporaryDirectory(dir=out.parent) as stage:  # the GGUF engine loads a folder's one file
            os.link(out / f"model.{q}.gguf", Path(stage) / "model.gguf")
            model_id = f"{prefix}-{q}" if len(files) > 1 or not cfg.model_id else prefix
            _common.install(cfg, stage, model_id=model_id, task="chat", fmt="gguf",
                            license=str(src.config.get("license", "unknown")),
                            source={"recipe": "llm", "quant": q}, description=HELP)
        print(f"llm: installed {q} as {model_id!r} (edge-run chat --model {model_id})")


add_arguments = Config.add_arguments  # the registry contract: `edge-run export llm` flags
main = _common.entry_point(__name__, "llm")


if __name__ == "__main__":
    raise SystemExit(main())
