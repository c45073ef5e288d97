"""Chat model (Hugging Face folder or hub id) -> decoder-with-past ONNX for onnxruntime (CPU and NPU EPs),
fp32 / int8 / int4 (MatMulNBits), verified against transformers, served by edge's ONNX chat engine.

    edge-run export llm-onnx SOURCE --quant int4 --out DIR [--add --id NAME]
    edge-run export llm-onnx --random-init tiny-llama --quant fp32 --out DIR

Output folder: model.onnx (+ model.onnx.data when large), tokenizer.json / tokenizer_config.json,
config.json, edge-model.json (KV layout, special tokens, chat template) and report.json: logits of the
graph driven through its KV cache vs transformers on a fixed sequence (max abs diff, top-1, mean KL)
and greedy answers of the ONNX chat engine vs transformers' generate() on a few chat prompts.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.llm.onnx_file import PRECISIONS
from export.llm.source import PRESETS
from export.recipes import _common
from export.recipes._common import RecipeConfig, option, random_init_option, source_option

HELP = "chat model (HF folder / hub id) -> decoder-with-past ONNX fp32/int8/int4, verified vs transformers"
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "List three uses of a brick."]
MIN_TOP1 = {"fp32": 0.98}  # int8 / int4 are reported, not gated


@dataclass
class Config(RecipeConfig):
    """The options of `edge-run export llm-onnx` (each is also a flag); threads come from ``settings``."""

    source: str | None = source_option("Hugging Face model folder or hub id")
    random_init: str | None = random_init_option(PRESETS, "seeded random model instead of a source")
    seed: int = option("--seed", default=0, type=int, help="seed for --random-init (default 0)")
    quant: str | None = option("--quant", help=f"one of {', '.join(PRECISIONS)} (default int4)")
    out: str | None = option("--out", "-o", required=True, help="output folder (written atomically)")
    overwrite: bool = option("--overwrite", default=False, action="store_true",
                             help="replace an existing output folder")
    add: bool = option("--add", default=False, action="store_true", help="install into the store and models.lock")
    model_id: str | None = option("--id", help="model id for --add (default: folder name)")


def check_precision(value: str | None) -> str:
    from edge.errors import BadRequest

    p = (value or "int4").strip().lower()
    if p not in PRECISIONS:
        raise BadRequest(f"unknown quant type {value!r} for ONNX; valid: {', '.join(PRECISIONS)} (one per export).",
                         param="quant")
    return p


def manifest_fields(src, precision: str) -> dict[str, Any]:
    """KV layout, special tokens and chat template the runtime engine needs (no transformers at run time)."""
    from tokenizers import Tokenizer

    from export.llm.gguf_file import add_bos_eos
    from export.llm.onnx_file import kv_shape_info

    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(str(src.folder))
    tcfg = src.tokenizer_config()
    tok = Tokenizer.from_file(str(src.folder / "tokenizer.json"))

    def text_of(key: str) -> str | None:
        v = tcfg.get(key)
        return v.get("content") if isinstance(v, dict) else v

    eos = set()
    for value in (src.config.get("eos_token_id"), _generation_eos(src.folder)):
        eos |= set(value if isinstance(value, list) else [value] if isinstance(value, int) else [])
    if text_of("eos_token") and tok.token_to_id(text_of("eos_token")) is not None:
        eos.add(tok.token_to_id(text_of("eos_token")))
    bos_id = src.config.get("bos_token_id")
    add_bos, _ = add_bos_eos(src, bos_id, None)
    return {"kv": kv_shape_info(cfg), "context_length": int(src.config.get("max_position_embeddings", 4096)),
            "bos_token_id": bos_id, "bos_token": text_of("bos_token"), "eos_token": text_of("eos_token"),
            "eos_token_ids": sorted(eos), "add_bos": add_bos, "chat_template": src.chat_template(),
            "precision": precision}


def _generation_eos(folder: Path):
    p = folder / "generation_config.json"
    return json.loads(p.read_text()).get("eos_token_id") if p.is_file() else None


def run(cfg: Config) -> Path:
    """check -> source -> fp32 ONNX -> quantize -> verify vs transformers -> write atomically."""
    from edge.errors import BadRequest
    from edge.manifest import ChatManifest, write
    from export.artifacts import ArtifactDir, file_table
    from export.llm import check, onnx_file, source as S
    from export.llm.disk import check_disk, weights_bytes
    from export.quantize import onnx_size
    from export.verify import write_report

    # 1. check inputs
    cfg = _common.typed(Config, cfg)
    precision = check_precision(cfg.quant)
    src = S.one_source(cfg.source, cfg.random_init)
    threads = cfg.settings.threads
    out = Path(cfg.out).absolute()
    if src is not None:
        check_disk(out.parent, weights_bytes(src.folder) // 2, ["f32", "f32"])  # fp32 graph + its quantized copy
    t0 = time.perf_counter()

    with ArtifactDir(out, overwrite=cfg.overwrite) as tmp:
        # 2. source
        if src is None:
            src = S.random_init(cfg.random_init, tmp / ".source", seed=cfg.seed)
        model = S.load_torch_model(src)

        # 3. export fp32 (traced), 4. quantize
        work = tmp / ".fp32"
        work.mkdir()
        onnx_file.export_fp32(model, work / "model.onnx")
        if precision == "fp32":
            for p in work.iterdir():
                p.rename(tmp / p.name)
        elif precision == "int8":
            onnx_file.quantize_int8(work / "model.onnx", tmp / "model.onnx")
        else:
            onnx_file.quantize_int4(work / "model.onnx", tmp / "model.onnx")
        shutil.rmtree(work)

        # tokenizer + config + manifest fields the engine reads
        from transformers import AutoTokenizer
        AutoTokenizer.from_pretrained(str(src.folder)).save_pretrained(str(tmp))
        shutil.copyfile(src.folder / "config.json", tmp / "config.json")
        manifest = ChatManifest.from_dict({"format": "onnx", "recipe": "llm-onnx", "model_file": "model.onnx",
                                           **manifest_fields(src, precision)}, "the llm-onnx manifest")
        write(tmp, manifest)

        # 5. verify against transformers (logits through the KV cache; greedy answers through the engine)
        report = check.verify_onnx(src, model, tmp, threads, PROMPTS)
        gate = MIN_TOP1.get(precision)
        passed = gate is None or (report["logits"]["top1_agreement"] >= gate and report["greedy_equal"])
        report.update({"kind": "llm_onnx_vs_transformers", "precision": precision, "passed": passed,
                       "thresholds": {"min_top1": gate, "greedy_equal": gate is not None},
                       "source": src.origin, "architecture": src.hf_arch, "model_size": onnx_size(tmp / "model.onnx"),
                       "export_s": round(time.perf_counter() - t0, 1)})
        write_report(tmp, report)
        if not passed:
            raise BadRequest(f"verification failed for {precision}: top-1 {report['logits']['top1_agreement']:.4f}, "
                             f"greedy equal {report['greedy_equal']}; nothing was written.", param="source")
        shutil.rmtree(tmp / ".source", ignore_errors=True)
        manifest.source = src.origin
        manifest.verify = {**report["logits"], "greedy_equal": report["greedy_equal"]}
        manifest.files = file_table(tmp)
        write(tmp, manifest)
    print(f"llm-onnx: wrote {out} ({precision}); vs transformers: top-1 {report['logits']['top1_agreement']:.3f}, "
          f"KL {report['logits']['mean_kl']:.2e}, greedy answers equal: {report['greedy_equal']}")
    if cfg.add:  # 6. install into the store and pin it in the user lock
        model_id = cfg.model_id or out.name
        _common.install(cfg, out, model_id=model_id, task="chat", fmt="onnx",
                        license=str(src.config.get("license", "unknown")),
                        source={"recipe": "llm-onnx", "precision": precision}, description=HELP)
        print(f"llm-onnx: installed as {model_id!r} (edge-run chat --model {model_id})")
    return out


add_arguments = Config.add_arguments  # the registry contract: `edge-run export llm-onnx` flags
main = _common.entry_point(__name__, "llm-onnx")


if __name__ == "__main__":
    raise SystemExit(main())
