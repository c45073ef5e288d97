"""The lcm recipe's argument checks, and the runtime's no-torch rule."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from edge.errors import BadRequest


def parse(*argv):
    from export.recipes import lcm_onnx

    p = argparse.ArgumentParser()
    lcm_onnx.add_arguments(p)
    return lcm_onnx, lcm_onnx.Config.from_args(p.parse_args(list(argv)))


@pytest.mark.parametrize("argv,message", [
    ((), "give exactly one of SOURCE"),
    (("some/folder", "--random-init", "tiny"), "give exactly one of SOURCE"),
    (("--random-init", "tiny", "--precisions", "int8"), "must list fp32"),
    (("--random-init", "tiny", "--precisions", "fp32,int4"), "must list fp32 and any of fp32, int8, int8-conv, winograd, int8-winograd, fp16, qdq"),
    (("--random-init", "tiny", "--precisions", "fp32", "--default-precision", "int8"), "not among the exported"),
    (("--random-init", "tiny", "--precisions", "fp32,winograd", "--winograd-size", "100"),
     "`--winograd-size` must be a positive multiple of 8 .* got 100"),
])
def test_bad_recipe_arguments(tmp_path, argv, message):
    recipe, args = parse(*argv, "--out", str(tmp_path / "out"))
    with pytest.raises(BadRequest, match=message):
        recipe.run(args)
    assert not (tmp_path / "out").exists()


def test_existing_output_is_not_overwritten(tiny_export):
    recipe, args = parse("--random-init", "tiny", "--out", str(tiny_export), "--no-progress")
    with pytest.raises(BadRequest, match="already exists"):
        recipe.run(args)
    assert (tiny_export / "edge-model.json").exists()


def test_runtime_never_imports_torch():
    code = ("import sys, edge.image.engine, edge.image.api, edge.image.cli, edge.server.image_routes; "
            "bad = sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules); "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"edge/ imported {out.stdout.strip()} {out.stderr[-500:]}"
