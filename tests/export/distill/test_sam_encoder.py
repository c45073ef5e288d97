"""sam-encoder: the student encoder's embeddings approach the teacher's (MSE drops >= 50 %), the masks
the teacher's own decoder draws from them agree more with the teacher's (IoU rises), the checkpoint is
upstream's format (any TinyViT size loads by shape), and it exports and segments in edge-run."""

from __future__ import annotations

import numpy as np
import pytest

from support import distill_report


def test_checkpoints_of_any_tinyvit_size_load_by_shape(sam_teacher, tmp_path):
    """sam_arch rebuilds the upstream classes from tensor shapes: the tiny teacher and MobileSAM's vit_t
    layout come back with every hyper-parameter that shows in a shape, and compute the same thing."""
    import torch
    from mobile_sam.build_sam import build_sam_vit_t

    from export.distill.sam_arch import load_sam, tinyvit_config
    from export.recipes.sam_onnx import build_sam

    ref = build_sam("tiny", seed=0)
    loaded = load_sam(sam_teacher)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ref.image_encoder(x), loaded.image_encoder(x))
    from export.distill import sam_encoder as S
    from export.distill.common import config_from_args

    cfg = config_from_args(S.Config, teacher=str(sam_teacher), out=str(tmp_path / "o"), student="micro")
    micro, _ = S.build_student(ref, S.student_layout(cfg), "teacher")
    torch.save(micro.state_dict(), tmp_path / "micro.pt")
    again = load_sam(tmp_path / "micro.pt")
    assert tinyvit_config(again.state_dict())["depths"] == [1, 1, 0, 0]
    with torch.no_grad():
        assert torch.equal(micro.eval().image_encoder(x), again.image_encoder(x))
    vit_t = build_sam_vit_t().state_dict()
    cfg = tinyvit_config(vit_t)
    assert cfg["embed_dims"] == [64, 128, 160, 320] and cfg["depths"] == [2, 2, 6, 2]
    assert cfg["num_heads"][1:] == [4, 5, 10] and cfg["window_sizes"] == [7, 7, 14, 7] and cfg["mlp_ratio"] == 4.0


def test_distillation_halves_embedding_mse_and_raises_mask_iou(sam_student):
    r = distill_report(sam_student)
    before, after = r["before"], r["after"]
    assert after["embedding_mse"] <= 0.5 * before["embedding_mse"], (before, after)
    assert after["mask_iou"] > before["mask_iou"], (before, after)
    assert r["student"]["student_encoder_params"] < r["student"]["teacher_encoder_params"]
    assert r["student"]["copied_tensors"] > 0


def test_the_saved_checkpoint_is_what_was_measured(sam_student, sam_teacher):
    """Reload mobile_sam.pt (upstream format: the teacher's prompt encoder and decoder, the student's
    encoder) and measure again on the held-out images: the report's 'after' numbers."""
    import torch

    from export.distill import data as D
    from export.distill import sam_encoder as S
    from export.distill.sam_arch import load_sam, load_state_dict

    student, teacher = load_sam(sam_student / S.CHECKPOINT), load_sam(sam_teacher)
    sd, td = load_state_dict(sam_student / S.CHECKPOINT), teacher.state_dict()
    assert all(torch.equal(sd[k], td[k]) for k in td if k.startswith(("prompt_encoder.", "mask_decoder.")))
    r = distill_report(sam_student)
    held = [D.scene(10_000 + k, objects=3 + k % 3) for k in range(r["data"]["held_out_images"])]
    with torch.no_grad():
        emb = [teacher.image_encoder(torch.from_numpy(S.encoder_input(h)))[0].numpy() for h in held]
    again = S.Evaluator(teacher, held, emb, r["config"]["eval_points"])(student)
    assert again["embedding_mse"] == pytest.approx(r["after"]["embedding_mse"], rel=1e-2)
    assert again["mask_iou"] == pytest.approx(r["after"]["mask_iou"], abs=0.02)


def test_student_exports_and_segments_in_edge_run(sam_student, work, edge_home_for):
    """`edge-run export sam <out>/mobile_sam.pt` (verified against upstream SamPredictor by the recipe),
    installed through the registry; Runtime.segment's mask matches upstream's on the student."""
    import torch
    from mobile_sam import SamPredictor

    from edge.api import Runtime
    from edge.cli import main
    from export.distill import data as D
    from export.distill.sam_arch import load_sam

    out = work / "sam-student-onnx"
    assert main(["export", "sam", str(sam_student / "mobile_sam.pt"), "--out", str(out), "--verify-images", "1"]) == 0
    home = edge_home_for(out, "mobilesam-distilled", "segment", "onnx")
    img = D.scene(4242, objects=3)
    with Runtime(home=str(home), threads=2, offline=True) as rt:
        res = rt.segment(img, points=[(320, 240, 1)], model="mobilesam-distilled", multimask=False)
    pred = SamPredictor(load_sam(sam_student / "mobile_sam.pt"))
    with torch.no_grad():
        pred.set_image(img)
        ref, _, _ = pred.predict(point_coords=np.array([[320.0, 240.0]]), point_labels=np.array([1]),
                                 multimask_output=False)
    ours = res.masks[res.best].mask
    inter, union = np.logical_and(ours, ref[0]).sum(), np.logical_or(ours, ref[0]).sum()
    assert union and inter / union >= 0.98


def test_bad_student_layout_is_a_clear_error(sam_teacher, tmp_path, capsys):
    from support import run_distill

    assert run_distill(["sam-encoder", "--teacher", str(sam_teacher), "--out", str(tmp_path / "o"), "--student-dims",
                    "8,16,24,64"], home=tmp_path / "h") == 2
    assert "last stage width must be one of (320, 448, 576)" in capsys.readouterr().err
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    assert run_distill(["sam-encoder", "--teacher", str(bad), "--out", str(tmp_path / "o")], home=tmp_path / "h") == 2
    assert "is not a SAM / MobileSAM checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
