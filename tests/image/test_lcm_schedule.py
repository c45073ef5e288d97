"""The numpy LCM scheduler against diffusers' LCMScheduler, step by step (same noise draws)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import LatentConsistencyModelPipeline
from diffusers import LCMScheduler as DiffusersLCM

from edge.image.lcm_schedule import LCMScheduler, guidance_scale_embedding
from export.lcm.reference import torch_noise

CASES = [(1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0), (4, 0.6), (3, 0.3), (2, 0.05)]


@pytest.mark.parametrize("steps,strength", CASES)
def test_timesteps_match_diffusers(steps, strength):
    ref = DiffusersLCM()
    ref.set_timesteps(steps, strength=strength)
    ours = LCMScheduler().set_timesteps(steps, strength=strength)
    assert ours.tolist() == ref.timesteps.tolist()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("steps,strength", [(1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0), (4, 0.6)])
def test_step_by_step_matches_diffusers(steps, strength, prediction):
    cfg = dict(prediction_type=prediction, original_inference_steps=50, timestep_scaling=10.0)
    ref, ours = DiffusersLCM(**cfg), LCMScheduler(**cfg)
    ref.set_timesteps(steps, strength=strength)
    ours.set_timesteps(steps, strength=strength)
    gen = torch.Generator().manual_seed(11)
    noise = torch_noise(11)  # the same stream diffusers draws from `gen`
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    xe = x.numpy().copy()
    outs = torch.Generator().manual_seed(2)
    for t in ref.timesteps:
        model_output = torch.randn(2, 4, 8, 8, generator=outs)
        x, den = ref.step(model_output, t, x, generator=gen, return_dict=False)
        xe, dene = ours.step(model_output.numpy(), int(t), xe, noise=noise)
        # alphas_cumprod differ by float32 rounding (~3e-7); at t=999 sqrt(alpha) ~ 0.07 amplifies it
        np.testing.assert_allclose(dene, den.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(xe, x.numpy(), rtol=1e-4, atol=1e-4)
    assert ours.step_index == steps


def test_alphas_and_add_noise_match():
    ref, ours = DiffusersLCM(), LCMScheduler()
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-5)
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8), dtype=np.float32)
    n = np.random.default_rng(1).standard_normal((1, 4, 8, 8), dtype=np.float32)
    want = ref.add_noise(torch.from_numpy(x), torch.from_numpy(n), torch.tensor([599])).numpy()
    np.testing.assert_allclose(ours.add_noise(x, n, 599), want, rtol=1e-5, atol=1e-6)


def test_scalings_match():
    ref, ours = DiffusersLCM(), LCMScheduler()
    for t in (0, 19, 259, 999):
        np.testing.assert_allclose(ours.scalings(t), [float(v) for v in ref.get_scalings_for_boundary_condition_discrete(t)],
                                   rtol=1e-6)


@pytest.mark.parametrize("w,dim", [(7.0, 256), (0.0, 32), (2.5, 33)])
def test_guidance_embedding_matches_diffusers(w, dim):
    want = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, torch.tensor([w, w]), embedding_dim=dim)
    got = guidance_scale_embedding(np.array([w, w]), dim)
    assert got.shape == (2, dim)
    # sin/cos of arguments up to w*1000 in float32: a few ulps of 7000 ~ 5e-4
    np.testing.assert_allclose(got, want.numpy(), atol=2e-3)


def test_last_step_needs_no_noise_and_others_do():
    s = LCMScheduler()
    s.set_timesteps(2)
    x = np.zeros((1, 4, 2, 2), np.float32)
    with pytest.raises(ValueError, match="noise source"):
        s.step(x, int(s.timesteps[0]), x)
    s.set_timesteps(1)
    prev, den = s.step(x, int(s.timesteps[0]), x)  # last step: no noise drawn
    assert prev is den


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="thresholding"):
        LCMScheduler.from_config({"thresholding": True})
    with pytest.raises(ValueError, match="prediction_type"):
        LCMScheduler(prediction_type="flow")
    with pytest.raises(ValueError, match="fewer steps"):
        LCMScheduler().set_timesteps(4, strength=0.05)
    cfg = dict(DiffusersLCM().config)
    assert LCMScheduler.from_config(cfg).original_inference_steps == 50  # diffusers' own config dict loads
