"""The PyTorch side of an LCM export: a diffusers LCM pipeline (folder or hub id), or the real LCM/SD1.5
architectures (CLIPTextModel, UNet2DConditionModel with time_cond_proj_dim, AutoencoderKL,
AutoencoderTiny) with seeded random weights and the real CLIP BPE vocabulary."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from export.lcm.tokenizer import clip_vocab_from_bpe, open_clip_bpe_path, tokenizer_merges

PRESETS = ("tiny", "sd15")
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                    "beta_schedule": "scaled_linear", "original_inference_steps": 50, "set_alpha_to_one": True,
                    "prediction_type": "epsilon", "timestep_scaling": 10.0, "clip_sample": False}


PARTS = ("text_encoder", "unet", "vae", "taesd")  # the PyTorch modules (vae serves vae_decoder and vae_encoder)


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

    def has(self, part: str) -> bool:
        return getattr(self, part) is not None

    def config(self, part: str):
        return getattr(self, part).config

    @contextlib.contextmanager
    def using(self, part: str) -> Iterator[Any]:
        """The module of ``part`` (held in memory for the whole life of this Source)."""
        yield getattr(self, part)


@dataclass
class OnDemand:
    """The same components one at a time, for exporting a model larger than what a laptop holds twice:
    only the configs stay in memory; :meth:`using` loads a module (from the source folder / hub, or from the
    memory-mapped copy :func:`random_to_disk` wrote) and drops it afterwards. SD1.5's fp32 modules are
    4.3 GB: holding all of them through the ONNX export, the quantizers and the verification sessions
    is what pushed the export to 15.6 GB."""

    loaders: dict[str, Callable[[], Any]]  # part -> a fresh module in eval mode
    configs: dict[str, Any]
    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    scheduler_config: dict
    model_id: str
    info: dict = field(default_factory=dict)

    def has(self, part: str) -> bool:
        return part in self.loaders

    def config(self, part: str):
        return self.configs[part]

    @contextlib.contextmanager
    def using(self, part: str) -> Iterator[Any]:
        """A fresh module of ``part``, freed (and its memory returned) when the block ends."""
        module = self.loaders[part]()
        try:
            yield module
        finally:
            del module
            release_memory()


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc keeps freed small blocks otherwise)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _random_modules(preset: str, seed: int, with_taesd: bool, vocab_size: int, bos: int, eos: int
                    ) -> Iterator[tuple[str, Any]]:
    """(part, module in eval mode) of a preset, built one after the other in the order that fixes the
    weights (unet, vae, taesd, text_encoder after ``torch.manual_seed(seed)``): a caller may drop each one
    before the next is built."""
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    torch.manual_seed(seed)  # construction order fixes the weights: keep it (benches rebuild and compare)
    if preset == "tiny":
        te_cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      projection_dim=32)
        yield "unet", UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, time_cond_proj_dim=32).eval()
        yield "vae", AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                                   block_out_channels=(8, 16, 16, 16), norm_num_groups=8, sample_size=64,
                                   down_block_types=("DownEncoderBlock2D",) * 4,
                                   up_block_types=("UpDecoderBlock2D",) * 4).eval()
        if with_taesd:
            yield "taesd", AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8),
                                           decoder_block_out_channels=(8, 8, 8, 8), num_encoder_blocks=(1, 1, 1, 1),
                                           num_decoder_blocks=(1, 1, 1, 1)).eval()
    else:
        te_cfg = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      projection_dim=768)
        yield "unet", UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                           time_cond_proj_dim=256).eval()  # SD1.5's defaults + LCM's w input
        yield "vae", AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                                   block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=512,
                                   down_block_types=("DownEncoderBlock2D",) * 4,
                                   up_block_types=("UpDecoderBlock2D",) * 4).eval()
        if with_taesd:
            yield "taesd", AutoencoderTiny().eval()  # defaults are TAESD's architecture
    cfg = CLIPTextConfig(vocab_size=vocab_size, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, **te_cfg)
    cfg._attn_implementation = "eager"
    yield "text_encoder", CLIPTextModel(cfg).eval()


def default_model_id(source: str | None, preset: str | None) -> str:
    """The model id an export of ``source`` (a folder or hub id) or of ``--random-init preset`` gets."""
    return f"lcm-{preset}-random" if preset else Path(str(source)).name.lower().replace("_", "-")


def _random_info(preset: str, seed: int) -> dict:
    return {"kind": "random-init", "preset": preset, "seed": seed, "license": "Apache-2.0"}


def random_components(preset: str, seed: int, with_taesd: bool = True) -> Source:
    """The real LCM/SD1.5 architectures with seeded random weights (``tiny``: seconds, for tests;
    ``sd15``: full size, for benchmarks)."""
    vocab, merges = clip_vocab_from_bpe(open_clip_bpe_path())
    parts = dict(_random_modules(preset, seed, with_taesd, len(vocab), vocab["<|startoftext|>"],
                                 vocab["<|endoftext|>"]))
    return Source(parts["text_encoder"], parts["unet"], parts["vae"], parts.get("taesd"), vocab, merges,
                  dict(SCHEDULER_CONFIG), model_id=default_model_id(None, preset), info=_random_info(preset, seed))


def save_module(module, path: Path) -> None:
    """``torch.save(module, path)``; a disk that fills up is an ENOSPC OSError (DiskFull for the export), not
    torch's RuntimeError from its zip writer ("unexpected pos ...")."""
    import errno
    import shutil

    import torch

    try:
        torch.save(module, path)
    except RuntimeError as e:
        need = sum(t.numel() * t.element_size() for t in module.state_dict().values())
        if shutil.disk_usage(Path(path).parent).free < need:
            Path(path).unlink(missing_ok=True)
            raise OSError(errno.ENOSPC, f"No space left on device writing {path}") from e
        raise


def random_to_disk(preset: str, seed: int, folder: Path, with_taesd: bool = True) -> OnDemand:
    """:func:`random_components`' modules (the same weights), each saved to ``folder`` and dropped as soon as
    it is built; :meth:`OnDemand.using` maps them back read-only from there (so the peak is one module)."""
    import torch

    vocab, merges = clip_vocab_from_bpe(open_clip_bpe_path())
    loaders, configs = {}, {}
    for part, module in _random_modules(preset, seed, with_taesd, len(vocab), vocab["<|startoftext|>"],
                                        vocab["<|endoftext|>"]):
        path = Path(folder) / f"{part}.pt"
        save_module(module, path)  # the whole module (its non-persistent buffers too); read back below
        configs[part] = module.config
        loaders[part] = functools.partial(_load_saved, path)
        del module
        release_memory()
    return OnDemand(loaders, configs, vocab, merges, dict(SCHEDULER_CONFIG), model_id=default_model_id(None, preset),
                    info=_random_info(preset, seed))


def _load_saved(path: Path):
    import torch

    return torch.load(path, mmap=True, weights_only=False).eval()  # written by random_to_disk in this run


def load_components(source: str, revision: str | None, taesd: str | None, scratch: Path) -> OnDemand:
    """A diffusers LCM pipeline (folder or hub id), one component at a time: each module is loaded from
    its subfolder when needed (``scratch`` keeps a random TAESD, so export and verification see one
    module); the tokenizer's vocab/merges are reused."""
    from diffusers import AutoencoderKL, AutoencoderTiny, LCMScheduler, UNet2DConditionModel
    from diffusers.configuration_utils import FrozenDict
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    def text_encoder():
        m = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", revision=revision)
        m.config._attn_implementation = "eager"
        return m.eval()

    def part(cls, sub):
        return lambda: cls.from_pretrained(source, subfolder=sub, revision=revision).eval()

    loaders = {"text_encoder": text_encoder, "unet": part(UNet2DConditionModel, "unet"),
               "vae": part(AutoencoderKL, "vae")}
    configs = {"text_encoder": CLIPTextConfig.from_pretrained(source, subfolder="text_encoder", revision=revision),
               "unet": FrozenDict(UNet2DConditionModel.load_config(source, subfolder="unet", revision=revision)),
               "vae": FrozenDict(AutoencoderKL.load_config(source, subfolder="vae", revision=revision))}
    if taesd == "random":
        import torch

        path = Path(scratch) / "taesd.pt"
        module = AutoencoderTiny().eval()  # small (10 MB)
        save_module(module, path)
        loaders["taesd"] = functools.partial(_load_saved, path)
        configs["taesd"] = module.config
        del module
    elif taesd:
        loaders["taesd"] = lambda: AutoencoderTiny.from_pretrained(taesd).eval()
        configs["taesd"] = FrozenDict(AutoencoderTiny.load_config(taesd))
    tok = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", revision=revision)
    vocab = dict(tok.get_vocab())
    ranks = getattr(tok, "bpe_ranks", None)
    merges = [m for m, _ in sorted(ranks.items(), key=lambda kv: kv[1])] if ranks else tokenizer_merges(tok)
    sched = LCMScheduler.load_config(source, subfolder="scheduler", revision=revision)
    cfg = {k: v for k, v in dict(sched).items() if not k.startswith("_")}
    return OnDemand(loaders, configs, vocab, merges, cfg, model_id=default_model_id(source, None),
                    info={"kind": "diffusers", "source": source, "revision": revision, "taesd": taesd})


def vae_scale_factor(src: Source | OnDemand) -> int:
    """Image pixels per latent pixel (8 for SD1.5's VAE)."""
    return 2 ** (len(src.config("vae").block_out_channels) - 1)
