"""lcm: the consistency-distillation maths agree with diffusers' schedulers and pipelines; the distilled
student's 1-, 2- and 4-step LCM samples move at least 50% closer (latent MSE) to the teacher's 50-step
DDIM samples than the undistilled student's; the output is a diffusers
LCM folder that `edge-run export lcm` exports and edge's Runtime runs; the LoRA variant fuses and
reloads with peft."""

from __future__ import annotations

import json

import pytest

from support import DISTILL_CONFIGS, distill_report, run_distill


def test_maths_match_diffusers():
    """w-embedding, boundary-condition scalings, x0 / eps for every prediction type and the DDIM solver
    step, each against the diffusers implementation."""
    import torch
    from diffusers import DDIMScheduler, LatentConsistencyModelPipeline, LCMScheduler

    from export.distill import lcm as L
    from export.lcm.sources import SCHEDULER_CONFIG

    w = torch.tensor([0.0, 2.0, 7.5, 14.0])
    ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=32)
    torch.testing.assert_close(L.guidance_scale_embedding(w, 32), ref)

    lcm = LCMScheduler(**SCHEDULER_CONFIG)
    t = torch.tensor([0, 19, 259, 999])
    cs, co = L.boundary_scalings(t, 10.0)
    for i, ti in enumerate(t.tolist()):
        rs, ro = lcm.get_scalings_for_boundary_condition_discrete(ti)
        assert cs[i].item() == pytest.approx(rs, rel=1e-6) and co[i].item() == pytest.approx(ro, rel=1e-6)

    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    base = {k: SCHEDULER_CONFIG[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")}
    for pred in ("epsilon", "v_prediction", "sample"):
        ddim = DDIMScheduler(**base, prediction_type=pred, set_alpha_to_one=False, clip_sample=False,
                             timestep_spacing="trailing")
        ddim.set_timesteps(50)
        solver = L.DDIMSolver(ddim.alphas_cumprod, 50)
        for index in (0, 1, 24, 49):
            tt = int(solver.timesteps[index])
            assert tt in ddim.timesteps.tolist()
            x0, eps = L.predicted_x0_and_eps(out, torch.tensor([tt]), x, ddim.alphas_cumprod, pred)
            step = ddim.step(out, tt, x, eta=0.0)
            torch.testing.assert_close(x0, step.pred_original_sample, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(solver.step(x0, eps, torch.tensor([index])), step.prev_sample,
                                       rtol=1e-4, atol=1e-4)


def test_simple_shapes_captions_fix_their_images():
    """--data simple-shapes (what the tests' and the bench's prompt-following teacher learns): each
    caption names the shape, its colour and the background colour of its image, so one caption always
    draws one image."""
    import numpy as np

    from export.distill import data as D

    seen: dict[str, np.ndarray] = {}
    for img, cap in D.CAPTION_SETS["simple-shapes"](400, size=16, seed=0):
        w = cap.split()
        assert len(w) == 7 and w[0] == "a" and w[3:5] == ["on", "a"] and w[6] == "background", cap
        fg, shape, bg = w[1], w[2], w[5]
        assert fg != bg and shape in D.SHAPES and img.shape == (16, 16, 3), cap
        assert tuple(img[0, 0]) == D.COLORS[bg], cap
        if shape != "ring":   # a ring's centre is background
            assert tuple(img[8, 8]) == D.COLORS[fg], cap
        assert (seen.setdefault(cap, img) == img).all(), cap
    assert len(seen) < 400   # repeated captions were drawn, and drew the same image


def test_student_starts_as_the_teacher(sd_teacher):
    """The zero-initialised w-embedding: at step 0 the student's output equals the teacher's, for any w."""
    import torch

    from export.distill import lcm as L

    pipe = L.load_teacher(sd_teacher)
    student = L.student_unet(pipe.unet, 32)
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    t = torch.tensor([999, 259])
    with torch.no_grad():
        a = pipe.unet(x, t, encoder_hidden_states=c).sample
        b = student(x, t, encoder_hidden_states=c,
                    timestep_cond=L.guidance_scale_embedding(torch.tensor([3.0, 9.0]), 32)).sample
    torch.testing.assert_close(a, b)


def test_distilled_student_is_closer_to_the_teacher(lcm_student):
    """Issue 9's proof: latent MSE to the teacher's 50-step DDIM samples (8 held-out prompts; the noise LCM
    injects between steps drawn after the initial latents from one seeded generator, as diffusers and
    edge's runtime draw it) drops by >= 50% vs the undistilled student at 2 and at 4 steps (measured:
    -62% / -58% / -56% at 1 / 2 / 4 steps). ``floor``: LCM sampling with the teacher's exact ODE as its
    consistency function, the best any student can do; at 1 step it is the reference itself."""
    r = distill_report(lcm_student)
    before, after = r["before"], r["after"]
    assert after["floor_latent_mse_1step"] == pytest.approx(0.0, abs=1e-10)  # 1 step: the exact ODE is DDIM-50
    for n in (1, 2, 4):
        k = f"latent_mse_{n}step"
        assert after[k] <= 0.5 * before[k], (n, before, after)
        assert after[f"floor_{k}"] < after[k], (n, after)
    assert r["student"]["time_cond_proj_dim"] == 32 and r["prediction_type"] == "v_prediction"


def test_output_is_a_diffusers_lcm_folder_measured_as_reported(lcm_student, sd_teacher):
    """LatentConsistencyModelPipeline.from_pretrained(out) gives the reported 'after' numbers again."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    from export.distill import lcm as L

    pipe = LatentConsistencyModelPipeline.from_pretrained(str(lcm_student), safety_checker=None,
                                                          requires_safety_checker=False)
    r = distill_report(lcm_student)
    cfg = r["config"]
    assert isinstance(pipe.scheduler, LCMScheduler)
    assert pipe.scheduler.config.original_inference_steps == cfg["ddim_steps"]  # the skipping interval trained
    teacher = L.load_teacher(sd_teacher)
    side = cfg["resolution"] // 8
    ev = L.Evaluator(teacher, r["data"]["held_out_prompts"], (4, side, side), [2, 4], cfg["eval_guidance"],
                     cfg["teacher_steps"], cfg["seed"] + 1)
    again = ev(pipe.unet, pipe.scheduler)
    for n in (2, 4):
        k = f"latent_mse_{n}step"
        assert again[k] == pytest.approx(r["after"][k], rel=1e-3)


def test_student_exports_and_generates_in_edge_run(lcm_student, work, edge_home_for):
    """`edge-run export lcm <out>` (verified against diffusers by the recipe), installed through the
    registry; Runtime.imagine renders with the distilled student in 2 steps."""
    from edge.api import Runtime
    from edge.cli import main

    out = work / "lcm-student-onnx"
    assert main(["export", "lcm", str(lcm_student), "--out", str(out), "--precisions", "fp32", "--no-taesd",
                 "--threads", "2", "--no-progress", "--model-id", "lcm-distilled"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["precisions"]["fp32"]["image"]["ok"]
    home = edge_home_for(out, "lcm-distilled", "image", "onnx")
    with Runtime(home=str(home), threads=2, offline=True) as rt:
        imgs = rt.imagine("a large red circle on a blue background", model="lcm-distilled", size="64x64", steps=2,
                          seed=3)
    assert len(imgs) == 1 and imgs[0].size == (64, 64)


def test_lora_variant_fuses_and_reloads(sd_teacher, work):
    """--variant lora: a few steps through the CLI; the fused UNet of the output equals the teacher +
    the saved peft adapter (lora/) merged again, and only adapters + the w-embedding were trained."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import PeftModel

    from export.distill import lcm as L

    out = work / "lcm-lora"
    assert run_distill(["lcm", "--config", str(DISTILL_CONFIGS / "lcm-tiny.toml"), "--teacher", str(sd_teacher), "--out",
                    str(out), "--variant", "lora", "--lora-rank", "8", "--steps", "20", "--lr", "1e-3",
                    "--eval-steps", "2", "--no-progress"], home=work / "home") == 0
    r = distill_report(out)
    assert r["student"]["trainable_params"] < 0.25 * r["student"]["unet_params"]
    assert r["after"]["latent_mse_2step"] < r["before"]["latent_mse_2step"]
    fused = UNet2DConditionModel.from_pretrained(str(out / "unet"))
    again = PeftModel.from_pretrained(L.student_unet(L.load_teacher(sd_teacher).unet, 32), str(out / "lora"))
    again = again.merge_and_unload()
    a, b = fused.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
