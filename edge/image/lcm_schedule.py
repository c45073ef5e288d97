"""The latent-consistency (LCM) noise schedule in numpy (not to be confused with edge.scheduler, the job
scheduler): the same maths as diffusers' ``LCMScheduler``
(skipping-step timestep schedule over ``original_inference_steps``, boundary-condition scalings
``c_skip``/``c_out``, noise re-injection between steps), without torch.

Tested step by step against diffusers in tests/image/test_lcm_schedule.py.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

NoiseSource = Callable[[tuple[int, ...]], np.ndarray]
"""Draws standard-normal noise of a given shape (float32)."""

SUPPORTED_PREDICTIONS = ("epsilon", "sample", "v_prediction")


class LCMScheduler:
    """Few-step LCM sampler. ``set_timesteps(n)`` then, per timestep, ``step(model_output, t, sample)``."""

    order = 1
    init_noise_sigma = 1.0
    sigma_data = 0.5

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "scaled_linear", original_inference_steps: int = 50,
                 set_alpha_to_one: bool = True, prediction_type: str = "epsilon",
                 timestep_scaling: float = 10.0, clip_sample: bool = False, clip_sample_range: float = 1.0):
        if beta_schedule == "scaled_linear":
            betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float32) ** 2
        elif beta_schedule == "linear":
            betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float32)
        else:
            raise ValueError(f"beta_schedule {beta_schedule!r} is not supported; use 'scaled_linear' or 'linear'.")
        if prediction_type not in SUPPORTED_PREDICTIONS:
            raise ValueError(f"prediction_type {prediction_type!r} is not supported; use one of {SUPPORTED_PREDICTIONS}.")
        self.num_train_timesteps = int(num_train_timesteps)
        self.original_inference_steps = int(original_inference_steps)
        self.prediction_type = prediction_type
        self.timestep_scaling = float(timestep_scaling)
        self.clip_sample = bool(clip_sample)
        self.clip_sample_range = float(clip_sample_range)
        self.alphas_cumprod = np.cumprod(np.float32(1.0) - betas, dtype=np.float32)
        self.final_alpha_cumprod = np.float32(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.timesteps = np.arange(num_train_timesteps, dtype=np.int64)[::-1].copy()
        self.num_inference_steps: int | None = None
        self.step_index: int | None = None

    @classmethod
    def from_config(cls, config: dict) -> "LCMScheduler":
        """Build from a diffusers scheduler_config.json dict (unknown keys ignored, unsupported ones rejected)."""
        if config.get("thresholding"):
            raise ValueError("LCMScheduler config uses thresholding, which edge-run does not support.")
        if config.get("rescale_betas_zero_snr"):
            raise ValueError("LCMScheduler config uses rescale_betas_zero_snr, which edge-run does not support.")
        if config.get("trained_betas") is not None:
            raise ValueError("LCMScheduler config uses trained_betas, which edge-run does not support.")
        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "original_inference_steps",
                "set_alpha_to_one", "prediction_type", "timestep_scaling", "clip_sample", "clip_sample_range")
        return cls(**{k: config[k] for k in keys if k in config})

    def set_timesteps(self, num_inference_steps: int, *, strength: float = 1.0,
                      original_inference_steps: int | None = None) -> np.ndarray:
        """Pick ``num_inference_steps`` evenly spaced (by index) timesteps from the LCM training schedule
        ``[k-1, 2k-1, ...]`` of ``original_inference_steps * strength`` entries, highest first."""
        original_steps = original_inference_steps or self.original_inference_steps
        if original_steps > self.num_train_timesteps:
            raise ValueError(f"original_inference_steps {original_steps} exceeds num_train_timesteps "
                             f"{self.num_train_timesteps}.")
        k = self.num_train_timesteps // original_steps
        origin = np.arange(1, int(original_steps * strength) + 1, dtype=np.int64) * k - 1
        if num_inference_steps > original_steps or len(origin) // num_inference_steps < 1:
            raise ValueError(f"{num_inference_steps} steps do not fit a schedule of {len(origin)} timesteps "
                             f"(original_inference_steps={original_steps}, strength={strength}); "
                             "use fewer steps or a higher strength.")
        origin = origin[::-1].copy()
        indices = np.floor(np.linspace(0, len(origin), num=num_inference_steps, endpoint=False)).astype(np.int64)
        self.timesteps = origin[indices]
        self.num_inference_steps = num_inference_steps
        self.step_index = None
        return self.timesteps

    def scalings(self, timestep: int) -> tuple[np.float32, np.float32]:
        """Boundary-condition scalings (c_skip, c_out) for a discrete timestep."""
        t = np.float32(timestep) * np.float32(self.timestep_scaling)
        sd2 = np.float32(self.sigma_data**2)
        c_skip = sd2 / (t**2 + sd2)
        c_out = t / np.sqrt(t**2 + sd2)
        return np.float32(c_skip), np.float32(c_out)

    def step(self, model_output: np.ndarray, timestep: int, sample: np.ndarray,
             noise: NoiseSource | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One LCM step. Returns (prev_sample, denoised). ``noise(shape)`` is called once, except on the
        last step, to re-inject noise at the next timestep's level."""
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps() before step()")
        if self.step_index is None:
            self.step_index = int(np.nonzero(self.timesteps == timestep)[0][0])
        # 1. previous timestep
        nxt = self.step_index + 1
        prev_t = int(self.timesteps[nxt]) if nxt < len(self.timesteps) else int(timestep)
        # 2. noise levels
        a_t = self.alphas_cumprod[int(timestep)]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t, b_prev = np.float32(1) - a_t, np.float32(1) - a_prev
        c_skip, c_out = self.scalings(int(timestep))
        # 3. predicted x_0
        if self.prediction_type == "epsilon":
            x0 = (sample - np.sqrt(b_t) * model_output) / np.sqrt(a_t)
        elif self.prediction_type == "sample":
            x0 = model_output
        else:
            x0 = np.sqrt(a_t) * sample - np.sqrt(b_t) * model_output
        if self.clip_sample:
            x0 = np.clip(x0, -self.clip_sample_range, self.clip_sample_range)
        # 4. consistency-model parameterisation
        denoised = (c_out * x0 + c_skip * sample).astype(np.float32)
        # 5. re-inject noise unless this is the last step
        if self.step_index != self.num_inference_steps - 1:
            if noise is None:
                raise ValueError("LCMScheduler.step needs a noise source for every step but the last.")
            eps = np.asarray(noise(model_output.shape), dtype=np.float32)
            prev = (np.sqrt(a_prev) * denoised + np.sqrt(b_prev) * eps).astype(np.float32)
        else:
            prev = denoised
        self.step_index += 1
        return prev, denoised

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timestep: int) -> np.ndarray:
        """Forward diffusion to ``timestep``: sqrt(a) * x + sqrt(1 - a) * noise."""
        a = self.alphas_cumprod[int(timestep)]
        return (np.sqrt(a) * original + np.sqrt(np.float32(1) - a) * noise).astype(np.float32)


def guidance_scale_embedding(w: np.ndarray, embedding_dim: int) -> np.ndarray:
    """Sinusoidal embedding of the (LCM, already minus one) guidance scale, shape (len(w), embedding_dim);
    the ``timestep_cond`` input of an LCM UNet (same as diffusers' get_guidance_scale_embedding)."""
    w = np.asarray(w, dtype=np.float32).reshape(-1) * np.float32(1000.0)
    half = embedding_dim // 2
    freq = np.exp(np.arange(half, dtype=np.float32) * -(np.log(np.float32(10000.0)) / np.float32(half - 1)))
    emb = w[:, None] * freq[None, :].astype(np.float32)
    emb = np.concatenate([np.sin(emb), np.cos(emb)], axis=1)
    if embedding_dim % 2 == 1:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32)
