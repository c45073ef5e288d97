"""LCM (latent consistency, SD1.5-class) text-to-image -> ONNX components for edge/image.

Source: a diffusers LCM pipeline folder or hub id (e.g. SimianLuo/LCM_Dreamshaper_v7), or
``--random-init tiny|sd15``: the real architectures (CLIPTextModel, UNet2DConditionModel with
time_cond_proj_dim, AutoencoderKL, AutoencoderTiny) with seeded random weights and the real CLIP BPE
vocabulary from the open_clip_torch wheel.

Stages: 1. source -> 2. export fp32 ONNX -> 3. quantize (int8 dynamic, fp16, QDQ static) -> 4. verify
every artifact against PyTorch and the final image against diffusers' pipeline -> 5. write tokenizer,
report.json and edge-model.json, atomically (export.artifacts.ArtifactDir).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from export.artifacts import MANIFEST, REPORT, ArtifactDir, file_table, write_json
from export.winograd import Rule

HELP = "latent-consistency text-to-image (LCM, SD1.5 class): text encoder, UNet, VAE, TAESD -> ONNX"
log = logging.getLogger("export.lcm")

PRESETS = ("tiny", "sd15")
PRECISIONS = ("fp32", "int8", "int8-conv", "winograd", "int8-winograd", "fp16", "qdq")
DEFAULT_PRECISIONS = "fp32,int8,fp16"
COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder", "taesd_decoder")
# which components each reduced precision rewrites; the others are shared with fp32 (no duplicate files)
# int8: MatMul/Gemm only (attention and projections; convolutions stay fp32); int8-conv: convolutions too
# (about 4x smaller UNet: what fits a 2 GB device)
# winograd: fp32, the 3x3 convolutions that see >= 16 px a side at the reference size computed by Winograd
# F(4x4 or 2x2, 3x3) (export/winograd.py: up to 4x fewer products, larger weights); int8-winograd: int8-conv
# with the convolutions of >= 32 px a side as Winograd on int16 / int8 transformed weights (fast and within
# 2 GB); both use the winograd VAE decoder and encoder (fp32). TAESD stays direct: at 64 channels its
# products are too small for the transforms to pay off (measured slower).
QUANTIZED = {"int8": ("text_encoder", "unet"), "int8-conv": ("text_encoder", "unet"), "fp16": COMPONENTS,
             "qdq": ("unet",), "winograd": ("unet", "vae_decoder", "vae_encoder"),
             "int8-winograd": ("text_encoder", "unet", "vae_decoder", "vae_encoder")}
WINOGRAD_INT8_RULES = (Rule(64, 4, "int16"), Rule(32, 2, "int8", 64 * 2**20))  # F(4x4) amplifies int8 rounding;
# the cap keeps each per-call dequantized weight under 64 MB (-0.1 GB peak RSS at 512 px, measured)
CONV_INT8 = ("MatMul", "Gemm", "Conv")
EXACT = ("fp32", "winograd")  # fp32 maths: held to the fp32 tolerances against PyTorch
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                    "beta_schedule": "scaled_linear", "original_inference_steps": 50, "set_alpha_to_one": True,
                    "prediction_type": "epsilon", "timestep_scaling": 10.0, "clip_sample": False}
VERIFY_PROMPT = "a lighthouse at dusk, oil painting"


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", help="diffusers LCM folder or hub id (e.g. SimianLuo/LCM_Dreamshaper_v7)")
    p.add_argument("--random-init", choices=PRESETS, help="build the architecture with seeded random weights")
    p.add_argument("--revision", help="hub revision of SOURCE (pin it for reproducible exports)")
    p.add_argument("--out", type=Path, help="output folder (default: ./<model-id>)")
    p.add_argument("--model-id", help="id for the manifest / models.lock (default from the source)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--precisions", default=DEFAULT_PRECISIONS,
                   help=f"comma list of {', '.join(PRECISIONS)} (default {DEFAULT_PRECISIONS})")
    p.add_argument("--default-precision", help="precision the runtime loads (default: int8 if exported, else fp32)")
    p.add_argument("--taesd", nargs="?", const="random", default=None,
                   help="add a TAESD fast decoder: a diffusers AutoencoderTiny folder / hub id, or 'random' "
                        "(default with --random-init)")
    p.add_argument("--no-taesd", action="store_true", help="do not add a TAESD decoder")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init weights and verification noise")
    p.add_argument("--winograd-size", type=int,
                   help="image side at which the winograd precisions pick the convolutions to rewrite "
                        "(default: the model's default size)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--verify-size", type=int, help="image side for verification (default 64 tiny, 256 otherwise)")
    p.add_argument("--verify-steps", type=int, default=2, help="LCM steps for the verification image")
    p.add_argument("--threads", type=int, default=0, help="ORT/torch threads for verification (0 = all)")
    p.add_argument("--add", action="store_true",
                   help="install the result into the store ($EDGE_HOME/models) and append it to models.lock")
    p.add_argument("--no-progress", action="store_true")


# ---------------------------------------------------------------------------------------------- tokenizer
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode map (order matters for the vocabulary ids)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def open_clip_bpe_path() -> Path:
    """bpe_simple_vocab_16e6.txt.gz shipped inside the open_clip_torch wheel."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip_torch is not installed; pip install 'edge-run[export]'.")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise RuntimeError(f"{path} is missing from the open_clip_torch install.")
    return path


def clip_vocab_from_bpe(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary (49408 entries) and merges from the open_clip BPE file, in CLIP's id order."""
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    units = list(bytes_to_unicode().values())
    words = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {w: i for i, w in enumerate(words)}, merges


def build_clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]):
    """A `tokenizers` Tokenizer with CLIP's normalizer, pre-tokenizer, BPE and BOS/EOS template,
    padded with <|endoftext|> to 77 like Stable Diffusion's tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                        fuse_unk=False, unk_token="<|endoftext|>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(("<|endoftext|>", vocab["<|endoftext|>"]),
                                                      ("<|startoftext|>", vocab["<|startoftext|>"]),
                                                      trim_offsets=False, add_prefix_space=False)
    tok.enable_truncation(max_length=77)
    tok.enable_padding(length=77, pad_id=vocab["<|endoftext|>"], pad_token="<|endoftext|>")
    return tok


def write_tokenizer(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> Path:
    """tokenizer.json (what edge/image reads) plus vocab.json / merges.txt (what diffusers reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    build_clip_tokenizer(vocab, merges).save(str(folder / "tokenizer.json"))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return folder / "tokenizer.json"


# ---------------------------------------------------------------------------------------------- source
@dataclass
class Source:
    """The PyTorch components and everything the manifest needs to describe them."""

    text_encoder: Any
    unet: Any
    vae: Any
    taesd: Any | None
    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    scheduler_config: dict
    model_id: str
    info: dict = field(default_factory=dict)


def random_components(preset: str, seed: int, with_taesd: bool = True) -> Source:
    """The real LCM/SD1.5 architectures with seeded random weights (``tiny``: seconds, for tests;
    ``sd15``: full size, for benchmarks)."""
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab, merges = clip_vocab_from_bpe(open_clip_bpe_path())
    torch.manual_seed(seed)  # construction order fixes the weights: keep it (benches rebuild and compare)
    if preset == "tiny":
        te_cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      projection_dim=32)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, time_cond_proj_dim=32)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                            block_out_channels=(8, 16, 16, 16), norm_num_groups=8, sample_size=64,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        taesd = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)) if with_taesd else None
    elif preset == "sd15":
        te_cfg = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      projection_dim=768)
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                    time_cond_proj_dim=256)  # defaults are SD1.5's; + LCM's w-embedding input
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                            block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=512,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        taesd = AutoencoderTiny() if with_taesd else None  # defaults are TAESD's architecture
    else:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    cfg = CLIPTextConfig(vocab_size=len(vocab), max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"], **te_cfg)
    cfg._attn_implementation = "eager"
    text_encoder = CLIPTextModel(cfg)
    for m in (text_encoder, unet, vae) + ((taesd,) if taesd is not None else ()):
        m.eval()
    return Source(text_encoder, unet, vae, taesd, vocab, merges, dict(SCHEDULER_CONFIG),
                  model_id=f"lcm-{preset}-random",
                  info={"kind": "random-init", "preset": preset, "seed": seed, "license": "Apache-2.0"})


def load_components(source: str, revision: str | None, taesd: str | None) -> Source:
    """A diffusers LCM pipeline (folder or hub id) -> Source; the tokenizer's vocab/merges are reused."""
    from diffusers import AutoencoderTiny, LatentConsistencyModelPipeline

    pipe = LatentConsistencyModelPipeline.from_pretrained(source, revision=revision, safety_checker=None,
                                                          requires_safety_checker=False)
    tok = pipe.tokenizer
    vocab = dict(tok.get_vocab())
    merges = _tokenizer_merges(tok)
    t = None
    if taesd and taesd != "random":
        t = AutoencoderTiny.from_pretrained(taesd).eval()
    elif taesd == "random":
        t = AutoencoderTiny().eval()
    pipe.text_encoder.config._attn_implementation = "eager"
    cfg = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    return Source(pipe.text_encoder.eval(), pipe.unet.eval(), pipe.vae.eval(), t, vocab, merges, cfg,
                  model_id=Path(source).name.lower().replace("_", "-"),
                  info={"kind": "diffusers", "source": source, "revision": revision, "taesd": taesd})


def _tokenizer_merges(tok) -> list[tuple[str, str]]:
    """Merges of a transformers CLIP tokenizer (from its merges.txt, else its tokenizer.json)."""
    files = getattr(tok, "vocab_files_names", {})
    folder = Path(getattr(tok, "name_or_path", ""))
    merges_file = folder / files.get("merges_file", "merges.txt")
    if merges_file.exists():
        lines = merges_file.read_text(encoding="utf-8").split("\n")
        return [tuple(x.split()) for x in lines if x and not x.startswith("#version")]
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    return [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]


# ---------------------------------------------------------------------------------------------- torch -> onnx
def _wrappers(src: Source) -> dict[str, Any]:
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids, return_dict=False)[0]

    class UNet(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            from export.attention import HeadSlicedAttnProcessor

            m.set_attn_processor(HeadSlicedAttnProcessor())  # one head's scores at a time: ~1 GB less at 512 px
            self.m = m

        def forward(self, sample, timestep, encoder_hidden_states, timestep_cond):
            return self.m(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False)[0]

    class Decoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, latent_sample):
            return self.m.decode(latent_sample, return_dict=False)[0]

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, sample):
            dist = self.m.encode(sample).latent_dist
            return dist.mean, dist.std

    out = {"text_encoder": TextEncoder(src.text_encoder), "unet": UNet(src.unet),
           "vae_decoder": Decoder(src.vae), "vae_encoder": Encoder(src.vae)}
    if src.taesd is not None:
        out["taesd_decoder"] = Decoder(src.taesd)
    return {k: v.eval() for k, v in out.items()}


def sample_inputs(src: Source, name: str, side: int, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Example feeds for a component at image side ``side``."""
    rng = np.random.default_rng(seed)
    f = vae_scale_factor(src)
    lat = side // f
    hidden = src.text_encoder.config.hidden_size
    if name == "text_encoder":
        return {"input_ids": rng.integers(0, len(src.vocab) - 2, size=(batch, 77)).astype(np.int64)}
    if name == "unet":
        return {"sample": rng.standard_normal((batch, 4, lat, lat), dtype=np.float32),
                "timestep": np.array([759], dtype=np.int64),
                "encoder_hidden_states": rng.standard_normal((batch, 77, hidden), dtype=np.float32),
                "timestep_cond": rng.standard_normal((batch, src.unet.config.time_cond_proj_dim), dtype=np.float32)}
    if name in ("vae_decoder", "taesd_decoder"):
        return {"latent_sample": rng.standard_normal((batch, 4, lat, lat), dtype=np.float32)}
    if name == "vae_encoder":
        return {"sample": rng.uniform(-1, 1, size=(batch, 3, side, side)).astype(np.float32)}
    raise KeyError(name)


DYNAMIC_AXES = {
    "text_encoder": {"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"}},
    "unet": {"sample": {0: "batch", 2: "height", 3: "width"}, "encoder_hidden_states": {0: "batch"},
             "timestep_cond": {0: "batch"}, "out_sample": {0: "batch", 2: "height", 3: "width"}},
    "vae_decoder": {"latent_sample": {0: "batch", 2: "height", 3: "width"}, "sample": {0: "batch", 2: "H", 3: "W"}},
    "taesd_decoder": {"latent_sample": {0: "batch", 2: "height", 3: "width"}, "sample": {0: "batch", 2: "H", 3: "W"}},
    "vae_encoder": {"sample": {0: "batch", 2: "H", 3: "W"}, "latent_mean": {0: "batch", 2: "height", 3: "width"},
                    "latent_std": {0: "batch", 2: "height", 3: "width"}},
}
OUTPUT_NAMES = {"text_encoder": ["last_hidden_state"], "unet": ["out_sample"], "vae_decoder": ["sample"],
                "taesd_decoder": ["sample"], "vae_encoder": ["latent_mean", "latent_std"]}


def vae_scale_factor(src: Source) -> int:
    return 2 ** (len(src.vae.config.block_out_channels) - 1)


def unet_trace_side(src: Source) -> int:
    """Image side for tracing the UNet whose latent side is NOT a multiple of the UNet's overall
    up-factor: diffusers then passes the skip connections' sizes to every upsampler, so the exported
    graph accepts any latent size (any image side that is a multiple of 8)."""
    up = 2 ** (len(src.unet.config.block_out_channels) - 1)
    lat = 2 * up + 1 if up > 1 else 9
    return lat * vae_scale_factor(src)


def export_component(module, name: str, feeds: dict[str, np.ndarray], path: Path, opset: int) -> Path:
    """torch.onnx.export (TorchScript exporter) -> ``path`` (with ``path.data`` when over 2 GB)."""
    import shutil
    import tempfile

    import onnx
    import torch

    from export.quantize import save_onnx

    args = tuple(torch.from_numpy(v) for v in feeds.values())
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=path.parent))
    try:
        with torch.inference_mode():
            torch.onnx.export(module, args, str(scratch / "model.onnx"), input_names=list(feeds),
                              output_names=OUTPUT_NAMES[name], dynamic_axes=DYNAMIC_AXES[name],
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        model = onnx.load(str(scratch / "model.onnx"), load_external_data=True)
        save_onnx(model, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


# ---------------------------------------------------------------------------------------------- noise / reference
def torch_noise(seed: int) -> Callable[[tuple[int, ...]], np.ndarray]:
    """A noise source drawing from ``torch.Generator().manual_seed(seed)`` — the same draws diffusers
    makes with that generator, so the numpy pipeline can be compared with diffusers' exactly."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(tuple(shape), generator=g, dtype=torch.float32).numpy()


def diffusers_pipeline(src: Source, tokenizer_dir: Path, img2img: bool = False):
    """diffusers' LatentConsistencyModel(Img2Img)Pipeline over the same PyTorch components (the reference)."""
    from diffusers import LatentConsistencyModelImg2ImgPipeline, LatentConsistencyModelPipeline, LCMScheduler
    from transformers import CLIPTokenizer

    vocab = json.loads((tokenizer_dir / "vocab.json").read_text())
    merges = [tuple(x.split()) for x in (tokenizer_dir / "merges.txt").read_text().split("\n")
              if x and not x.startswith("#version")]
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    cls = LatentConsistencyModelImg2ImgPipeline if img2img else LatentConsistencyModelPipeline
    pipe = cls(vae=src.vae, text_encoder=src.text_encoder, tokenizer=tok, unet=src.unet,
               scheduler=LCMScheduler.from_config(src.scheduler_config), safety_checker=None,
               feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_image(src: Source, tokenizer_dir: Path, prompt: str, side: int, steps: int, seed: int,
                    guidance_scale: float = 8.0, init_image=None, strength: float = 0.6) -> np.ndarray:
    """uint8 (H, W, 3) from diffusers, with torch.Generator(seed)."""
    import torch

    pipe = diffusers_pipeline(src, tokenizer_dir, img2img=init_image is not None)
    kw = dict(image=init_image, strength=strength) if init_image is not None else dict(height=side, width=side)
    with torch.inference_mode():
        out = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance_scale,
                   generator=[torch.Generator().manual_seed(seed)], output_type="np", **kw).images
    return (out[0] * 255).round().astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


# ---------------------------------------------------------------------------------------------- manifest
def manifest(src: Source, model_id: str, files: dict[str, dict[str, str]], default_precision: str,
             report: dict) -> dict:
    decoders = {"vae": {"scaling_factor": float(src.vae.config.scaling_factor)}}
    if src.taesd is not None:
        decoders["taesd"] = {"scaling_factor": float(src.taesd.config.scaling_factor)}
    return {
        "schema": 1, "id": model_id, "task": "image", "format": "onnx", "family": "lcm", "recipe": "lcm",
        "source": src.info, "precision": default_precision, "precisions": files,
        "tokenizer": "tokenizer/tokenizer.json", "scheduler": src.scheduler_config,
        "unet": {"time_cond_proj_dim": int(src.unet.config.time_cond_proj_dim),
                 "in_channels": int(src.unet.config.in_channels),
                 "cross_attention_dim": int(src.unet.config.cross_attention_dim)},
        "vae": {"scaling_factor": float(src.vae.config.scaling_factor), "scale_factor": vae_scale_factor(src),
                "latent_channels": int(src.vae.config.latent_channels)},
        "decoders": decoders, "default_decoder": "vae", "size_multiple": 8,
        "default_size": int(src.unet.config.sample_size) * vae_scale_factor(src),
        # bytes of the files each precision loads (the folder holds all precisions; a RAM estimate wants this)
        "load_bytes": {p: r.get("bytes") for p, r in report["precisions"].items()},
        "verify": {p: {"image_max_diff_255": r.get("image", {}).get("max_diff_255"),
                       "image_psnr": r.get("image", {}).get("psnr")} for p, r in report["precisions"].items()},
    }


def edge_components(src_manifest: dict, folder: Path, precision: str, threads: int):
    """edge/image Components over the exported ONNX files (what the runtime will run)."""
    from edge.image.engine import components_from_manifest

    return components_from_manifest(src_manifest, folder, precision=precision, threads=threads, device="cpu")


# ---------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> Path:
    """Export, quantize, verify, write. Returns the finished artifact folder."""
    import torch
    from tqdm import tqdm

    from edge.errors import BadRequest

    # 1. check arguments
    if bool(args.source) == bool(args.random_init):
        raise BadRequest("give exactly one of SOURCE (diffusers folder / hub id) or --random-init tiny|sd15.",
                         param="source")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or "fp32" not in precisions:
        raise BadRequest(f"`--precisions` {args.precisions!r} must list fp32 and any of {', '.join(PRECISIONS)}.",
                         param="precisions")
    default_precision = args.default_precision or ("int8" if "int8" in precisions else "fp32")
    if default_precision not in precisions:
        raise BadRequest(f"`--default-precision` {default_precision!r} is not among the exported precisions "
                         f"{precisions}.", param="default_precision")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = args.threads or torch.get_num_threads()
    taesd = None if args.no_taesd else (args.taesd or ("random" if args.random_init else None))

    stages = ["source", "export fp32"] + [f"quantize {p}" for p in precisions if p != "fp32"] + ["verify", "write"]
    bar = tqdm(total=len(stages), desc="lcm export", unit="stage", disable=args.no_progress)

    def stage(name: str) -> None:
        bar.set_postfix_str(name)

    # 2. source
    stage("source")
    if args.random_init:
        src = random_components(args.random_init, args.seed, with_taesd=taesd is not None)
    else:
        src = load_components(args.source, args.revision, taesd)
    model_id = args.model_id or src.model_id
    out = args.out or Path(model_id)
    verify_side = args.verify_size or (64 if args.random_init == "tiny" else 256)
    if verify_side % 8:
        raise BadRequest(f"`--verify-size` must be a multiple of 8, got {verify_side}.", param="verify_size")
    if args.winograd_size is not None and (args.winograd_size <= 0 or args.winograd_size % 8):
        raise BadRequest(f"`--winograd-size` must be a positive multiple of 8 (an image side), got "
                         f"{args.winograd_size}; e.g. --winograd-size 512.", param="winograd_size")
    bar.update()

    with ArtifactDir(out, overwrite=args.overwrite) as tmp:
        # 3. export fp32
        stage("export fp32")
        tok_dir = tmp / "tokenizer"
        write_tokenizer(tok_dir, src.vocab, src.merges)
        wrappers = _wrappers(src)
        (tmp / "fp32").mkdir()
        files: dict[str, dict[str, str]] = {"fp32": {}}
        for name, module in wrappers.items():
            side = unet_trace_side(src) if name == "unet" else verify_side
            export_component(module, name, sample_inputs(src, name, side, seed=args.seed), tmp / "fp32" / f"{name}.onnx",
                             args.opset)
            files["fp32"][name] = f"fp32/{name}.onnx"
        bar.update()

        # 4. quantize / rewrite
        winograd_side = args.winograd_size or int(src.unet.config.sample_size) * vae_scale_factor(src)
        for p in sorted(precisions, key=PRECISIONS.index):  # winograd before int8-winograd, which shares it
            if p == "fp32":
                continue
            stage(f"quantize {p}")
            (tmp / p).mkdir()
            files[p] = dict(files["fp32"])
            for name in QUANTIZED[p]:
                if name not in wrappers:
                    continue
                if shared := shared_component(p, name, files):
                    files[p][name] = shared
                    continue
                calibration = functools.partial(calibration_feeds, src, tmp, files["fp32"], verify_side,
                                                args.verify_steps, threads)
                make_precision(p, name, tmp / files["fp32"][name], tmp / p / f"{name}.onnx",
                               winograd_side=winograd_side, vae_scale=vae_scale_factor(src), calibration=calibration)
                files[p][name] = f"{p}/{name}.onnx"
            bar.update()

        # 5. verify
        stage("verify")
        report = verify(src, tmp, files, verify_side, args.verify_steps, args.seed, threads)
        report.update({"model_id": model_id, "source": src.info, "opset": args.opset,
                       "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        for p in (p for p in EXACT if p in report["precisions"]):
            bad = [n for n, r in report["precisions"][p]["components"].items() if not r["ok"]]
            if bad or not report["precisions"][p]["image"]["ok"]:
                raise RuntimeError(f"{p} verification failed for {bad or ['image']}: see the numbers below\n"
                                   + json.dumps(report["precisions"][p], indent=1))
        bar.update()

        # 6. write manifest and report
        stage("write")
        write_json(tmp / REPORT, report)
        m = manifest(src, model_id, files, default_precision, report)
        m["files"] = file_table(tmp)
        write_json(tmp / MANIFEST, m)
        bar.update()
    bar.close()
    if args.add:  # 7. install into the store and pin in the user lock (hashes computed from the files)
        from edge.cli import settings_from_args
        from edge.registry import add_local_model

        add_local_model(settings_from_args(args), out, model_id=model_id, task="image", fmt="onnx",
                        license=src.info.get("license", "see source"), source={"recipe": "lcm", **{
                            k: v for k, v in src.info.items() if isinstance(v, (str, int, float)) and k != "kind"}},
                        description=HELP)
    return Path(out).absolute()


# ---------------------------------------------------------------------------------------------- precisions
def reference_shapes(path: Path, side: int, vae_scale: int) -> dict[str, list[int]]:
    """A component's input shapes for one image of ``side`` px (its dynamic axes as named in DYNAMIC_AXES)."""
    import onnx

    size = {"batch": 1, "height": side // vae_scale, "width": side // vae_scale, "H": side, "W": side}
    model = onnx.load(str(path), load_external_data=False)
    return {i.name: [d.dim_value if d.HasField("dim_value") else size[d.dim_param] for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input}


def shared_component(precision: str, name: str, tables: dict[str, dict[str, str]]) -> str | None:
    """The file another precision already wrote that ``precision`` uses as is for ``name`` (int8-winograd's
    decoders and VAE encoder are winograd's fp32 ones), or None."""
    if precision == "int8-winograd" and name not in ("unet", "text_encoder"):
        rel = tables.get("winograd", {}).get(name, "")
        return rel if rel.startswith("winograd/") else None
    return None


def make_precision(precision: str, name: str, src: Path, dst: Path, *, winograd_side: int = 512, vae_scale: int = 8,
                   calibration: Callable[[], list] | None = None) -> Path:
    """Write component ``name`` in ``precision`` from its fp32 file ``src`` (see QUANTIZED and the Winograd rules)."""
    from export import quantize as q
    from export import winograd as wg

    if precision == "int8":
        return q.dynamic_int8(src, dst)
    if precision == "int8-winograd" and name == "text_encoder":  # the 49408 x 768 token embedding too: -114 MB
        return q.dynamic_int8(src, dst, op_types=("MatMul", "Gemm", "Gather"))
    if precision == "int8-conv":
        return q.dynamic_int8(src, dst, op_types=CONV_INT8)
    if precision == "fp16":
        return q.fp16(src, dst)
    if precision == "qdq":
        if calibration is None:
            raise ValueError("qdq needs calibration feeds")
        return q.static_qdq(src, dst, q.FeedsReader(calibration()))
    if precision not in ("winograd", "int8-winograd"):
        raise ValueError(f"unknown precision {precision!r}")
    shapes = reference_shapes(src, winograd_side, vae_scale)
    if name != "unet" or precision == "winograd":  # fp32 weights
        wg.winograd_file(src, dst, shapes)
        return dst
    # int8-winograd UNet: Winograd on int16 / int8 transformed weights, then int8-conv on everything else
    staged = dst.with_name(f"{dst.stem}.winograd.onnx")
    done = wg.winograd_file(src, staged, shapes, WINOGRAD_INT8_RULES)
    q.dynamic_int8(staged, dst, op_types=CONV_INT8, nodes_to_exclude=[n for r in done for n in r.new_nodes])
    for f in (staged, staged.with_name(staged.name + ".data")):
        f.unlink(missing_ok=True)
    return dst


# ---------------------------------------------------------------------------------------------- verify
def _latency(fn: Callable[[], Any], repeat: int = 2) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def verify(src: Source, folder: Path, files: dict[str, dict[str, str]], side: int, steps: int, seed: int,
           threads: int) -> dict:
    """Every artifact vs its PyTorch module (max abs diff, latency) and the final image of every
    precision vs diffusers' fp32 PyTorch pipeline (max diff in 1/255 units, PSNR)."""
    import torch

    from edge.devices import make_session
    from edge.image.pipeline import ImageRequest, LCMPipeline
    from export.quantize import onnx_size

    wrappers = _wrappers(src)
    ref_img = reference_image(src, folder / "tokenizer", VERIFY_PROMPT, side, steps, seed)
    torch_out: dict[str, list[np.ndarray]] = {}
    feeds = {name: sample_inputs(src, name, side, seed=seed + 1) for name in wrappers}
    for name, module in wrappers.items():
        with torch.inference_mode():
            o = module(*[torch.from_numpy(v) for v in feeds[name].values()])
        torch_out[name] = [t.numpy() for t in (o if isinstance(o, tuple) else (o,))]
    report: dict[str, Any] = {"verify": {"side": side, "steps": steps, "seed": seed, "prompt": VERIFY_PROMPT},
                              "precisions": {}}
    for precision, comp in files.items():
        rows = {}
        for name, rel in comp.items():
            sess = make_session(folder / rel, threads=threads, device="cpu")
            run = functools.partial(sess.run, None, feeds[name])
            outs = run()
            diff = max(float(np.max(np.abs(o.astype(np.float32) - t))) for o, t in zip(outs, torch_out[name]))
            scale = max(float(np.max(np.abs(t))) for t in torch_out[name])
            rel_diff = diff / max(scale, 1e-6)
            rows[name] = {"file": rel, "bytes": onnx_size(folder / rel), "max_abs_diff": diff,
                          "max_rel_diff": rel_diff, "latency_ms": _latency(run),
                          "ok": bool(np.isfinite(diff) and (precision not in EXACT or rel_diff < 1e-3))}
            del sess, run  # release the session before the next one
        m = {"precisions": files, "precision": precision, "tokenizer": "tokenizer/tokenizer.json",
             **manifest(src, "verify", files, precision, {"precisions": {}})}
        comps = edge_components(m, folder, precision, threads)
        pipe = LCMPipeline(comps, model_id="verify")
        req = ImageRequest(prompt=VERIFY_PROMPT, width=side, height=side, steps=steps, seed=seed)
        t0 = time.perf_counter()
        gen = pipe.generate_steps(req, noise=[torch_noise(seed)])
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            img = np.asarray(stop.value[0])
        total = time.perf_counter() - t0
        d = np.abs(img.astype(np.int16) - ref_img.astype(np.int16))
        report["precisions"][precision] = {
            "components": rows,
            "bytes": sum(onnx_size(folder / r) for r in set(comp.values())),
            "image": {"max_diff_255": int(d.max()), "mean_diff_255": float(d.mean()), "psnr": psnr(img, ref_img),
                      "pipeline_s": total, "ok": bool(precision not in EXACT or d.max() <= 2)},
        }
    return report


def calibration_feeds(src: Source, folder: Path, fp32_files: dict[str, str], side: int, steps: int,
                      threads: int, prompts: tuple[str, ...] = (VERIFY_PROMPT, "a red car in the rain",
                                                                "portrait of an old fisherman")) -> list[dict]:
    """UNet inputs recorded while the fp32 edge pipeline renders a few prompts (for static QDQ)."""
    from edge.image.pipeline import ImageRequest, LCMPipeline

    m = {"precisions": {"fp32": fp32_files}, **manifest(src, "calib", {"fp32": fp32_files}, "fp32", {"precisions": {}})}
    comps = edge_components(m, folder, "fp32", threads)
    recorded: list[dict] = []
    unet = comps.unet

    def recording_unet(**feeds):
        recorded.append({k: np.array(v) for k, v in feeds.items()})
        return unet(**feeds)

    comps.unet = recording_unet
    pipe = LCMPipeline(comps, model_id="calib")
    for i, prompt in enumerate(prompts):
        for _ in pipe.generate_steps(ImageRequest(prompt=prompt, width=side, height=side, steps=steps, seed=i)):
            pass
    return recorded
