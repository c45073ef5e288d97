"""lcm: latent consistency distillation (Luo et al. 2023, "Latent Consistency Models"; LCM-LoRA,
Luo et al. 2023) of a diffusers text-to-image teacher into a few-step LCM student.

One training step, for a batch of (image, caption) pairs:
  1. latents z = VAE(image) x scaling factor; the caption's text embedding c (frozen text encoder);
  2. a DDIM timestep index n; t_{n+k} = the teacher's ODE grid of ``--ddim-steps`` points, t_n = t_{n+k}
     - k with the skipping interval k = 1000 / ddim_steps; noise z to x_{t_{n+k}};
  3. a guidance scale w ~ U[w_min, w_max]; the student sees it through its w-embedding
     (``time_cond_proj``, the sinusoidal embedding of w, zero-initialised so the student starts as the
     teacher);
  4. student: f(x_{t_{n+k}}, w, c, t_{n+k}) = c_skip x + c_out x0_pred (the boundary-condition scalings);
  5. teacher with classifier-free guidance (x0 and eps each cond + w (cond - uncond)) takes one DDIM step
     x_{t_{n+k}} -> x_{t_n};
  6. target: the EMA target network's f(x_{t_n}, w, c, t_n) (no gradient);
  7. pseudo-Huber loss sqrt((f - target)^2 + c^2) - c; after the optimizer step the target network
     follows the student (EMA, ``--ema-decay``).

Variants: ``full`` trains every UNet weight; ``lora`` (LCM-LoRA) trains LoRA adapters (peft) on the
attention, feed-forward, resnet and time-embedding layers plus the w-embedding, with the online student
as its own target (as LCM-LoRA does); the adapters are fused into the UNet for the output and also
saved un-fused (``lora/``, peft format) so they can be applied to the teacher again.

Before / after (held-out captions and noise): mean squared error, in latent space, between the
student's 2- and 4-step LCM samples (diffusers' LatentConsistencyModelPipeline) and the teacher's
50-step DDIM samples with the same guidance (diffusers' StableDiffusionPipeline). Next to them, the
error of a perfect student (``floor_*``: LCM sampling with the teacher's exact ODE as consistency
function): LCM injects fresh noise between steps (drawn, as diffusers and edge's runtime draw it, from
the seeded generator after the initial latents), so even a perfect student leaves the reference
trajectory, by an amount set by how closely the teacher follows its prompts. The output is a diffusers
LCM pipeline folder that `edge-run export lcm <out>` takes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.distill.common import TrainConfig, Trainer, opt, require_path

HELP = "latent consistency distillation of a diffusers text-to-image teacher (full or LCM-LoRA) -> LCM folder"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]


@dataclass
class Config(TrainConfig):
    teacher: str | None = opt(None, "the teacher: a diffusers text-to-image pipeline folder (Stable Diffusion class)")
    variant: str = opt("full", "train the whole UNet (full) or LoRA adapters (lora = LCM-LoRA)", choices=("full", "lora"))
    lora_rank: int = opt(64, "LoRA rank (--variant lora)")
    lora_alpha: float | None = opt(None, "LoRA alpha (default: the rank)")
    w_embedding_dim: int = opt(256, "size of the student's guidance-scale embedding (time_cond_proj_dim) when the "
                                     "teacher has none")
    w_min: float = opt(3.0, "smallest guidance w sampled in training (teacher CFG: cond + w (cond - uncond); "
                            "guidance_scale = w + 1)")
    w_max: float = opt(15.0, "largest guidance w sampled in training")
    ddim_steps: int = opt(50, "points of the teacher's DDIM ODE grid (skipping interval k = 1000 / this)")
    ema_decay: float = opt(0.95, "EMA decay of the target network (--variant full)")
    loss: str = opt("huber", "consistency distance", choices=("huber", "l2"))
    huber_c: float = opt(0.001, "pseudo-Huber constant c")
    timestep_scaling: float = opt(10.0, "boundary-condition time scaling (LCM's 10)")
    data: str = opt("shapes", "training pairs: generated captioned shapes ('shapes': shape, colour, size, place, "
                              "patterned background; 'simple-shapes': shape, colour, background colour) or a "
                              "folder of images with same-named .txt captions")
    num_images: int = opt(256, "generated (image, caption) pairs for --data shapes / simple-shapes")
    resolution: int = opt(512, "training image side in pixels (multiple of 8)")
    empty_prompt_prob: float = opt(0.0, "share of captions replaced by the empty prompt")
    eval_prompts: int = opt(4, "held-out captions (generated, another seed) for the evaluation")
    eval_steps: str = opt("2,4", "LCM step counts evaluated")
    eval_guidance: float = opt(8.0, "guidance_scale of the evaluation (teacher's DDIM and the student's LCM)")
    teacher_steps: int = opt(50, "DDIM steps of the teacher's reference samples")
    lr: float = opt(1e-5, "peak learning rate (AdamW); LCM-LoRA uses about 1e-4")


# ---------------------------------------------------------------------------------------------- maths
def guidance_scale_embedding(w, dim: int):
    """Sinusoidal embedding of the guidance scale w (LCM's w-embedding; the same as diffusers'
    LatentConsistencyModelPipeline.get_guidance_scale_embedding)."""
    import torch

    w = w.float() * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


def boundary_scalings(t, timestep_scaling: float = 10.0, sigma_data: float = 0.5):
    """(c_skip, c_out) of the consistency parameterisation at discrete time t (c_skip(0) = 1, c_out(0) = 0)."""
    s = timestep_scaling * t.float()
    c_skip = sigma_data ** 2 / (s ** 2 + sigma_data ** 2)
    c_out = s / (s ** 2 + sigma_data ** 2) ** 0.5
    return c_skip, c_out


def _b(x, ndim: int):
    return x.reshape(-1, *([1] * (ndim - 1)))


def predicted_x0_and_eps(output, t, sample, alphas_cumprod, prediction_type: str):
    """(x0, eps) implied by a UNet output of ``prediction_type`` at time t."""
    a = _b(alphas_cumprod[t].sqrt(), sample.ndim).to(sample.dtype)
    s = _b((1 - alphas_cumprod[t]).sqrt(), sample.ndim).to(sample.dtype)
    if prediction_type == "epsilon":
        return (sample - s * output) / a, output
    if prediction_type == "v_prediction":
        return a * sample - s * output, a * output + s * sample
    if prediction_type == "sample":
        return output, (sample - a * output) / s
    raise ValueError(f"prediction_type {prediction_type!r} is not supported")


class DDIMSolver:
    """The teacher's ODE solver: DDIM on a ``steps``-point grid t_i = (i + 1) * k - 1, one step from
    t_{n+k} to t_n given (x0, eps) predictions."""

    def __init__(self, alphas_cumprod, steps: int, train_timesteps: int = 1000):
        import torch

        k = train_timesteps // steps
        self.k = k
        self.timesteps = torch.arange(1, steps + 1, dtype=torch.long) * k - 1
        acp = alphas_cumprod.float()
        self.alpha_prev = torch.cat([acp[:1], acp[self.timesteps[:-1]]])

    def step(self, x0, eps, index):
        a_prev = _b(self.alpha_prev[index], x0.ndim).to(x0.dtype)
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def consistency_loss(pred, target, kind: str, c: float):
    import torch

    if kind == "l2":
        return torch.nn.functional.mse_loss(pred.float(), target.float())
    return (torch.sqrt((pred.float() - target.float()) ** 2 + c ** 2) - c).mean()


# ---------------------------------------------------------------------------------------------- models
def load_teacher(path: Path):
    """The teacher's components from a diffusers pipeline folder (frozen, float32)."""
    from diffusers import DiffusionPipeline

    from edge.errors import BadRequest

    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadRequest(f"--teacher {str(path)!r} is not a diffusers pipeline folder: {str(e).splitlines()[0][:200]}",
                         param="--teacher") from None
    missing = [n for n in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if getattr(pipe, n, None) is None]
    if missing:
        raise BadRequest(f"--teacher {str(path)!r} lacks {', '.join(missing)}; give a Stable-Diffusion-class "
                         "text-to-image pipeline.", param="--teacher")
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.eval().requires_grad_(False)
    return pipe


def student_unet(teacher_unet, w_dim: int):
    """The teacher's UNet plus a w-embedding (time_cond_proj) initialised to zero: at step 0 the
    student computes exactly what the teacher computes."""
    import torch
    from diffusers import UNet2DConditionModel

    if teacher_unet.config.time_cond_proj_dim is not None:
        return copy.deepcopy(teacher_unet)
    cfg = {k: v for k, v in dict(teacher_unet.config).items() if not k.startswith("_")}
    cfg["time_cond_proj_dim"] = w_dim
    unet = UNet2DConditionModel.from_config(cfg)
    missing, unexpected = unet.load_state_dict(teacher_unet.state_dict(), strict=False)
    assert not unexpected and all("cond_proj" in k for k in missing), (missing, unexpected)
    with torch.no_grad():
        unet.time_embedding.cond_proj.weight.zero_()
        if unet.time_embedding.cond_proj.bias is not None:
            unet.time_embedding.cond_proj.bias.zero_()
    return unet


def add_lora(unet, rank: int, alpha: float | None):
    """peft LoRA adapters on the UNet's attention / feed-forward / resnet / time layers; the w-embedding
    is trained in full (modules_to_save). Returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    names = {n for n, _ in unet.named_modules()}
    targets = [t for t in LORA_TARGETS if any(n == t or n.endswith("." + t) for n in names)]
    cfg = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=targets, init_lora_weights="gaussian",
                     modules_to_save=["time_embedding.cond_proj"])
    return get_peft_model(unet, cfg)


def lcm_scheduler(teacher_scheduler, ddim_steps: int, timestep_scaling: float):
    from diffusers import LCMScheduler

    cfg = {k: v for k, v in dict(teacher_scheduler.config).items() if not k.startswith("_")}
    cfg.update(original_inference_steps=ddim_steps, timestep_scaling=timestep_scaling, clip_sample=False,
               set_alpha_to_one=True)
    cfg.pop("steps_offset", None)
    cfg.pop("timestep_spacing", None)
    return LCMScheduler.from_config(cfg)


# ---------------------------------------------------------------------------------------------- evaluation
def encode_prompts(pipe, prompts: list[str]):
    import torch

    tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt")
    with torch.no_grad():
        return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0]


def teacher_samples(pipe, prompts: list[str], latents, steps: int, guidance: float):
    """The teacher's DDIM samples (latents) with classifier-free guidance, through diffusers'
    StableDiffusionPipeline (trailing DDIM timesteps: t = 999 ... 19 for 50 steps)."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    sd = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                 unet=pipe.unet, scheduler=DDIMScheduler.from_config(
                                     pipe.scheduler.config, timestep_spacing="trailing", set_alpha_to_one=True),
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    side = latents.shape[-1] * sd.vae_scale_factor
    with torch.no_grad():
        return sd(prompts, height=side, width=side, num_inference_steps=steps, guidance_scale=guidance,
                  latents=latents.clone(), output_type="latent").images


def seeded_noise(seed: int, shape: tuple[int, ...]):
    """(initial latents, generator) as diffusers' pipelines draw them from ``generator=manual_seed(seed)``:
    the latents first, then the same generator goes on to give the noise LCM injects between steps
    (independent of the latents; edge's runtime draws them the same way from one numpy stream)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), g


def student_samples(pipe, unet, scheduler, prompts: list[str], latents, steps: int, guidance: float, seed: int):
    """The student's LCM samples (latents) through diffusers' LatentConsistencyModelPipeline; ``latents``
    are ``seeded_noise(seed, ...)``'s and the injected noise comes from that generator after them."""
    import torch
    from diffusers import LatentConsistencyModelPipeline

    lcm = LatentConsistencyModelPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                         unet=unet, scheduler=copy.deepcopy(scheduler), safety_checker=None,
                                         feature_extractor=None, requires_safety_checker=False)
    lcm.set_progress_bar_config(disable=True)
    side = latents.shape[-1] * lcm.vae_scale_factor
    _, g = seeded_noise(seed, tuple(latents.shape))
    with torch.no_grad():
        return lcm(prompts, height=side, width=side, num_inference_steps=steps, guidance_scale=guidance,
                   latents=latents.clone(), output_type="latent", generator=g).images


def teacher_ode(pipe, prompts: list[str], sample, t: int, guidance: float, teacher_steps: int = 50):
    """The teacher's guided DDIM ODE solved from ``sample`` at time t down to 0 on the reference grid
    (trailing spacing, step 1000 / teacher_steps; t must lie on it): the exact consistency function of
    the teacher's ODE as the reference samples discretise it."""
    import torch

    acp = pipe.scheduler.alphas_cumprod.float()
    stride = int(pipe.scheduler.config.num_train_timesteps) // teacher_steps
    grid = list(range(int(t), -1, -stride))
    c = encode_prompts(pipe, prompts)
    u = encode_prompts(pipe, [""]).expand(len(prompts), -1, -1)
    pred = pipe.scheduler.config.get("prediction_type", "epsilon")
    x = sample
    for i, ti in enumerate(grid):
        tt = torch.full((len(prompts),), ti, dtype=torch.long)
        with torch.no_grad():
            o = pipe.unet(torch.cat([x, x]), torch.cat([tt, tt]), encoder_hidden_states=torch.cat([u, c])).sample
        out = o[:len(prompts)] + guidance * (o[len(prompts):] - o[:len(prompts)])
        x0, eps = predicted_x0_and_eps(out, tt, x, acp, pred)
        a_prev = acp[grid[i + 1]] if i + 1 < len(grid) else torch.tensor(1.0)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


def oracle_samples(pipe, scheduler, prompts: list[str], latents, steps: int, guidance: float, seed: int,
                   teacher_steps: int = 50):
    """LCM multistep sampling (the LCMScheduler's timesteps and injected noise, drawn as
    ``student_samples`` draws it) with a *perfect* consistency function, the teacher's own ODE
    (``teacher_ode``): the closest any distilled student can get to the reference samples at ``steps``."""
    import torch

    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(steps)
    ts = [int(t) for t in sched.timesteps]
    _, g = seeded_noise(seed, tuple(latents.shape))
    acp = sched.alphas_cumprod.float()
    x = latents.clone()
    for i, t in enumerate(ts):
        x0 = teacher_ode(pipe, prompts, x, t, guidance, teacher_steps)
        if i + 1 == len(ts):
            return x0
        noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        x = acp[ts[i + 1]].sqrt() * x0 + (1 - acp[ts[i + 1]]).sqrt() * noise


class Evaluator:
    """Held-out captions and noise; the teacher's 50-step samples are computed once, and so is the
    floor: the error of LCM sampling with the teacher's exact ODE as its consistency function (the
    noise LCM injects between steps moves even a perfect student off the reference trajectory)."""

    def __init__(self, pipe, prompts: list[str], latent_shape: tuple[int, ...], steps: list[int], guidance: float,
                 teacher_steps: int, seed: int, scheduler=None):
        self.pipe, self.prompts, self.steps, self.guidance, self.seed = pipe, prompts, steps, guidance, seed
        self.latents, _ = seeded_noise(seed, (len(prompts), *latent_shape))
        self.reference = teacher_samples(pipe, prompts, self.latents, teacher_steps, guidance)
        self.floor = {}
        if scheduler is not None and int(pipe.scheduler.config.num_train_timesteps) % teacher_steps == 0:
            for n in steps:
                ts = copy.deepcopy(scheduler)
                ts.set_timesteps(n)
                stride = int(pipe.scheduler.config.num_train_timesteps) // teacher_steps
                if all((int(t) + 1) % stride == 0 for t in ts.timesteps):   # every LCM timestep on the grid
                    got = oracle_samples(pipe, scheduler, prompts, self.latents, n, guidance, seed, teacher_steps)
                    self.floor[f"floor_latent_mse_{n}step"] = float(((got - self.reference) ** 2).mean())

    def __call__(self, unet, scheduler) -> dict:
        unet.eval()
        out = {}
        for n in self.steps:
            got = student_samples(self.pipe, unet, scheduler, self.prompts, self.latents, n, self.guidance, self.seed)
            out[f"latent_mse_{n}step"] = float(((got - self.reference) ** 2).mean())
        out["reference_latent_var"] = float(self.reference.var())
        out.update(self.floor)
        return out


class Pairs:
    """(image, caption) training pairs: generated shapes (in memory) or a folder read lazily. The frozen
    VAE and text encoder see each generated pair once (their outputs are kept, as the pairs are);
    a folder's pairs are read and encoded at every step, so any folder size fits in memory."""

    def __init__(self, cfg: Config):
        from edge.errors import BadRequest
        from export.distill import data as D

        self.posteriors: dict[int, Any] | None = None
        self.embeddings: dict[str, Any] | None = None
        if cfg.data in D.CAPTION_SETS:
            pairs = D.CAPTION_SETS[cfg.data](cfg.num_images, size=cfg.resolution, seed=cfg.seed)
            self.images, self.captions = [p for p, _ in pairs], [c for _, c in pairs]
            self.posteriors, self.embeddings = {}, {}
            return
        folder = require_path(cfg.data, "--data", f"one of {', '.join(map(repr, D.CAPTION_SETS))} or a folder of "
                              "images with same-named .txt captions")
        self.images = D.ImageFolder(folder, captions=True, size=cfg.resolution)
        if not len(self.images):
            raise BadRequest(f"--data {cfg.data!r} holds no image with a same-named .txt caption.", param="--data")
        self.captions = [self.images.caption(i) for i in range(len(self.images))]

    def __len__(self) -> int:
        return len(self.captions)

    def pixels(self, idx: list[int]):
        """A batch as a float tensor in [-1, 1], N x 3 x H x W."""
        import numpy as np
        import torch

        return torch.from_numpy(np.stack([self.images[i] for i in idx])).permute(0, 3, 1, 2).float() / 127.5 - 1

    def posterior(self, vae, idx: list[int], device):
        """The VAE posterior (mean, std) of the batch's images (unscaled latents)."""
        import torch

        todo = list(dict.fromkeys(idx)) if self.posteriors is None else \
            [i for i in dict.fromkeys(idx) if i not in self.posteriors]
        got = {}
        if todo:
            with torch.no_grad():
                d = vae.encode(self.pixels(todo).to(device)).latent_dist
            got = {i: (d.mean[j], d.std[j]) for j, i in enumerate(todo)}
            if self.posteriors is not None:
                self.posteriors.update(got)
        src = got if self.posteriors is None else self.posteriors
        return torch.stack([src[i][0] for i in idx]), torch.stack([src[i][1] for i in idx])

    def text(self, pipe, caps: list[str]):
        """The frozen text encoder's hidden states of the batch's captions."""
        import torch

        if self.embeddings is None:
            return encode_prompts(pipe, caps)
        todo = [c for c in dict.fromkeys(caps) if c not in self.embeddings]
        if todo:
            self.embeddings.update(zip(todo, encode_prompts(pipe, todo)))
        return torch.stack([self.embeddings[c] for c in caps])


# ---------------------------------------------------------------------------------------------- run
def run(cfg: Config, *, stop_after: int | None = None) -> Path:
    """Teacher -> student (+ w-embedding, LoRA) -> consistency distillation -> LCM pipeline folder."""
    import torch

    from edge.errors import BadRequest
    from export.distill import data as D

    # 1. check inputs
    teacher_dir = require_path(cfg.teacher, "--teacher", "a diffusers text-to-image pipeline folder")
    if cfg.resolution % 8 or cfg.resolution < 8:
        raise BadRequest(f"--resolution must be a positive multiple of 8, got {cfg.resolution}.", param="--resolution")
    if not 0 <= cfg.w_min <= cfg.w_max:
        raise BadRequest(f"need 0 <= --w-min <= --w-max, got {cfg.w_min} and {cfg.w_max}.", param="--w-min")
    if not 1 <= cfg.ddim_steps <= 1000 or 1000 % cfg.ddim_steps:
        raise BadRequest(f"--ddim-steps must divide 1000 (e.g. 50), got {cfg.ddim_steps}.", param="--ddim-steps")
    if not 0 <= cfg.ema_decay < 1:
        raise BadRequest(f"--ema-decay must be in [0, 1), got {cfg.ema_decay}.", param="--ema-decay")
    try:
        eval_steps = sorted({int(x) for x in cfg.eval_steps.split(",") if x.strip()})
    except ValueError:
        eval_steps = []
    if not eval_steps or min(eval_steps) < 1 or max(eval_steps) > 8:
        raise BadRequest(f"--eval-steps {cfg.eval_steps!r} must list LCM step counts between 1 and 8, e.g. 2,4.",
                         param="--eval-steps")
    tr = Trainer(cfg, "lcm")

    # 2. teacher, student, target, data
    pipe = load_teacher(teacher_dir)
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    acp = pipe.scheduler.alphas_cumprod.float()
    solver = DDIMSolver(acp, cfg.ddim_steps, int(pipe.scheduler.config.num_train_timesteps))
    base = student_unet(pipe.unet, cfg.w_embedding_dim)
    w_dim = base.config.time_cond_proj_dim
    if cfg.variant == "lora":
        student = add_lora(base, cfg.lora_rank, cfg.lora_alpha)
        target = None                              # LCM-LoRA: the online student is its own target
    else:
        student = base.requires_grad_(True)
        target = copy.deepcopy(base).requires_grad_(False).eval()
        tr.register(target)
    scheduler = lcm_scheduler(pipe.scheduler, cfg.ddim_steps, cfg.timestep_scaling)
    pairs = Pairs(cfg)
    captions = pairs.captions
    held_set = D.CAPTION_SETS.get(cfg.data, D.shapes_with_captions)   # unseen captions of the same kind
    seen = set(captions)
    held = list(dict.fromkeys(c for _, c in held_set(cfg.eval_prompts * 16, size=8, seed=cfg.seed + 7777)
                              if c not in seen))[:cfg.eval_prompts]
    if len(held) < cfg.eval_prompts:
        raise BadRequest(f"--eval-prompts {cfg.eval_prompts}: only {len(held)} generated captions are not among the "
                         f"{len(seen)} training captions; lower --eval-prompts or --num-images.", param="--eval-prompts")
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.to(tr.device)
    if target is not None:
        target.to(tr.device)
    sf = float(pipe.vae.config.scaling_factor)
    lat_side = cfg.resolution // (2 ** (len(pipe.vae.config.block_out_channels) - 1))
    evaluator = Evaluator(pipe, held, (pipe.unet.config.in_channels, lat_side, lat_side), eval_steps,
                          cfg.eval_guidance, cfg.teacher_steps, cfg.seed + 1, scheduler) if tr.is_main else None
    uncond = encode_prompts(pipe, [""])
    model, _ = tr.setup(student)

    # 3. distil
    def loss_fn(step: int):
        g = tr.generator(step)
        idx = tr.batch_indices(step, len(pairs))
        b = len(idx)
        dev = tr.device
        with torch.no_grad():
            mean, std = pairs.posterior(pipe.vae, idx, dev)
            z = (mean + std * torch.randn(mean.shape, generator=g).to(dev)) * sf     # a sample of the posterior
            caps = [("" if torch.rand(1, generator=g).item() < cfg.empty_prompt_prob else captions[i]) for i in idx]
            c = pairs.text(pipe, caps)
            u = uncond.expand(b, -1, -1)
        index = torch.randint(0, cfg.ddim_steps, (b,), generator=g)
        t_start = solver.timesteps[index]
        t_end = (t_start - solver.k).clamp(min=0)
        noise = torch.randn(z.shape, generator=g).to(dev)
        a = _b(acp[t_start].sqrt(), 4).to(dev)
        s = _b((1 - acp[t_start]).sqrt(), 4).to(dev)
        x_start = a * z + s * noise
        w = cfg.w_min + (cfg.w_max - cfg.w_min) * torch.rand(b, generator=g)
        w_emb = guidance_scale_embedding(w, w_dim).to(dev)
        wb = _b(w, 4).to(dev)
        cs0, co0 = (_b(v, 4).to(dev) for v in boundary_scalings(t_start, cfg.timestep_scaling))
        cs1, co1 = (_b(v, 4).to(dev) for v in boundary_scalings(t_end, cfg.timestep_scaling))
        # student: consistency function at t_{n+k}
        out = model(x_start, t_start.to(dev), encoder_hidden_states=c, timestep_cond=w_emb).sample
        x0, _ = predicted_x0_and_eps(out, t_start, x_start, acp.to(dev), prediction)
        pred = cs0 * x_start + co0 * x0
        with torch.no_grad():
            # teacher: one guided DDIM step t_{n+k} -> t_n
            both = pipe.unet(torch.cat([x_start, x_start]), torch.cat([t_start, t_start]).to(dev),
                             encoder_hidden_states=torch.cat([c, u])).sample
            cx0, ceps = predicted_x0_and_eps(both[:b], t_start, x_start, acp.to(dev), prediction)
            ux0, ueps = predicted_x0_and_eps(both[b:], t_start, x_start, acp.to(dev), prediction)
            x_prev = solver.step(cx0 + wb * (cx0 - ux0), ceps + wb * (ceps - ueps), index.to(dev))
            # target: consistency function at t_n (EMA network; LoRA: the student itself)
            net = target if target is not None else tr.unwrap()
            tout = net(x_prev, t_end.to(dev), encoder_hidden_states=c, timestep_cond=w_emb).sample
            tx0, _ = predicted_x0_and_eps(tout, t_end, x_prev, acp.to(dev), prediction)
            tgt = cs1 * x_prev + co1 * tx0
        return consistency_loss(pred, tgt, cfg.loss, cfg.huber_c), {}

    def ema(step: int) -> None:
        if target is None:
            return
        with torch.no_grad():
            for pt, ps in zip(target.parameters(), tr.unwrap().parameters()):
                pt.mul_(cfg.ema_decay).add_(ps.detach(), alpha=1 - cfg.ema_decay)

    def ev() -> dict:
        m = tr.unwrap()
        unet = m.get_base_model() if cfg.variant == "lora" else m
        return evaluator(unet, scheduler)

    report = tr.fit(loss_fn, evaluate=ev, after_step=ema, stop_after=stop_after)
    if "stopped_at_step" in report:
        return tr.out
    report.update(teacher=str(teacher_dir.absolute()), prediction_type=prediction,
                  data={"train_pairs": len(pairs), "held_out_prompts": held},
                  student={"variant": cfg.variant, "time_cond_proj_dim": w_dim,
                           "trainable_params": sum(p.numel() for p in tr.params),
                           "unet_params": sum(p.numel() for p in pipe.unet.parameters())})

    # 4. write the diffusers LCM folder (LoRA: fused into the UNet, and the adapter un-fused in lora/)
    def write(tmp: Path) -> None:
        from diffusers import LatentConsistencyModelPipeline

        m = tr.unwrap()
        if cfg.variant == "lora":
            m.save_pretrained(str(tmp / "lora"))
            unet = copy.deepcopy(m).merge_and_unload()
        else:
            unet = m
        out = LatentConsistencyModelPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                             unet=unet.to("cpu"), scheduler=scheduler, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
        out.save_pretrained(str(tmp))

    out = tr.write_output(report, write)
    tr.end()
    return out
