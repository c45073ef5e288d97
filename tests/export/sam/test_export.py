"""The sam recipe: what it writes (report.json, edge-model.json), and that verification gates it."""

from __future__ import annotations

import argparse
import json

import pytest

from edge.errors import BadRequest
from export.artifacts import sha256_file


def _args(*argv: str) -> argparse.Namespace:
    from export.recipes import sam_onnx as R

    p = argparse.ArgumentParser()
    R.add_arguments(p)
    return p.parse_args(list(argv))


def test_fp32_report_and_manifest(sam_fp32_dir):
    report = json.loads((sam_fp32_dir / "report.json").read_text())
    assert report["passed"] is True and report["reference"].startswith("mobile_sam.SamPredictor")
    assert report["summary"]["min_mask_iou"] >= 0.99 and report["summary"]["max_embedding_rel_err"] < 1e-3
    cases = {c["case"] for c in report["checks"]["images"][0]["cases"]}
    assert {"point", "points", "box", "box_point", "point_multimask", "box_multimask"} <= cases
    manifest = json.loads((sam_fp32_dir / "edge-model.json").read_text())
    assert manifest["task"] == "segment" and manifest["precision"] == "fp32"
    assert manifest["source"] == {"kind": "random-init", "preset": "tiny", "seed": 0}
    files = {f["name"]: f for f in manifest["files"]}
    for name in ("encoder.onnx", "decoder.onnx"):
        assert files[name]["sha256"] == sha256_file(sam_fp32_dir / name)
    assert not [p for p in sam_fp32_dir.iterdir() if p.name.startswith(".")]


def test_onnx_interface(sam_fp32_dir):
    import onnxruntime as ort

    enc = ort.InferenceSession(str(sam_fp32_dir / "encoder.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in enc.get_inputs()] == [("image", [1, 3, 1024, 1024])]
    assert enc.get_outputs()[0].shape == [1, 256, 64, 64]
    dec = ort.InferenceSession(str(sam_fp32_dir / "decoder.onnx"), providers=["CPUExecutionProvider"])
    ins = {i.name: i.shape for i in dec.get_inputs()}
    assert ins["point_coords"][1] == ins["point_labels"][1] == "num_points"     # any number of points
    assert [o.name for o in dec.get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]


def test_verification_gates_the_artifact(sam_fp32_dir, tmp_path):
    """ONNX files from seed 0 checked against a seed-1 PyTorch model must fail, leaving nothing behind."""
    out = tmp_path / "wrong"
    with pytest.raises(BadRequest, match="verification failed"):
        from export.recipes import sam_onnx as R

        R.run(_args("--random-init", "tiny", "--seed", "1", "--out", str(out), "--verify-images", "1",
                    "--from-onnx", str(sam_fp32_dir)))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, match", [
    (["--out", "X"], "exactly one source"),
    (["ckpt.pt", "--random-init", "tiny", "--out", "X"], "exactly one source"),
    (["/nonexistent/mobile_sam.pt", "--out", "X"], "does not exist"),
])
def test_bad_arguments(argv, match, tmp_path):
    from export.recipes import sam_onnx as R

    argv = [a.replace("X", str(tmp_path / "out")) for a in argv]
    with pytest.raises(BadRequest, match=match):
        R.run(_args(*argv))
    assert not (tmp_path / "out").exists()


def test_existing_output_is_not_touched(sam_torch, tmp_path):
    from export.recipes import sam_onnx as R

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BadRequest, match="already exists"):
        R.run(_args("--random-init", "tiny", "--out", str(out)), sam=sam_torch)
    assert (out / "keep.txt").read_text() == "mine"


def test_checkpoint_loading(tmp_path):
    """A real MobileSAM (vit_t) state dict loads through upstream's registry; anything else is a
    clear error."""
    import torch

    from export.recipes import sam_onnx as R

    from mobile_sam import sam_model_registry

    torch.manual_seed(3)
    full = sam_model_registry["vit_t"]()  # upstream's own builder, random init
    ckpt = tmp_path / "mobile_sam.pt"
    torch.save(full.state_dict(), ckpt)
    loaded = R.load_checkpoint(ckpt)
    a, b = full.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    bad = tmp_path / "other.pt"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(BadRequest, match="not a MobileSAM"):
        R.load_checkpoint(bad)


def test_recipe_flags_fit_the_export_cli():
    """`edge-run export sam` adds the runtime settings flags after the recipe's own: no clash."""
    from edge.cli import add_settings_flags
    from export.recipes import sam_onnx as R

    p = argparse.ArgumentParser()
    R.add_arguments(p)
    add_settings_flags(p)
    a = p.parse_args(["--random-init", "tiny", "--out", "o", "--add", "--id", "m", "--home", "/h", "--threads", "2"])
    assert (a.random_init, a.add, a.model_id, a.home, a.threads) == ("tiny", True, "m", "/h", "2")
