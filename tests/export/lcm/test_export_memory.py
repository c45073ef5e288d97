"""The lcm export within a laptop's memory (issue 19.3): models moved and rewritten with their weights
streamed file to file, the PyTorch modules one at a time with the same weights, each stage's seconds and
peak RSS in report.json; and the README's export command as written, through the CLI (issue 21)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]


def conv_model(path: Path, per_tensor_files: bool = True) -> Path:
    """Two 3x3 convolutions and a MatMul, every weight in its own external file (as torch.onnx.export
    writes a model over 2 GB)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("w1", (16, 8, 3, 3)), ("b1", (16,)), ("w2", (16, 16, 3, 3)), ("m", (32, 24)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["h", "w2"], ["c"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("MatMul", ["c", "m"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=not per_tensor_files,
                    size_threshold=0, location=path.name + ".data")
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture()
def large(monkeypatch):
    """Every model counts as over protobuf's limit: the streaming paths run on small models."""
    from export import quantize

    monkeypatch.setattr(quantize, "PROTOBUF_LIMIT", 0)


def test_move_onnx_streams_every_tensor_into_one_data_file(tmp_path, large):
    from export.quantize import move_onnx

    src = conv_model(tmp_path / "scratch" / "model.onnx")
    x = np.random.default_rng(1).standard_normal((1, 8, 32, 32)).astype(np.float32)
    want = run(src, x)
    dst = move_onnx(src, tmp_path / "out" / "unet.onnx")
    assert sorted(p.name for p in dst.parent.iterdir()) == ["unet.onnx", "unet.onnx.data"]
    assert sorted(p.name for p in src.parent.iterdir()) == []  # the per-tensor files went with it
    np.testing.assert_array_equal(run(dst, x), want)
    move_onnx(dst, dst)  # in place (what the quantizers' output gets): same model, still one data file
    assert sorted(p.name for p in dst.parent.iterdir()) == ["unet.onnx", "unet.onnx.data"]
    np.testing.assert_array_equal(run(dst, x), want)


def test_winograd_file_streamed_equals_in_memory(tmp_path, monkeypatch):
    from export import quantize
    from export import winograd as wg

    src = conv_model(tmp_path / "fp32" / "unet.onnx", per_tensor_files=False)
    x = np.random.default_rng(2).standard_normal((1, 8, 32, 32)).astype(np.float32)
    shapes = {"x": [1, 8, 32, 32]}
    (tmp_path / "mem").mkdir()
    in_memory = wg.winograd_file(src, tmp_path / "mem" / "unet.onnx", shapes)
    monkeypatch.setattr(quantize, "PROTOBUF_LIMIT", 0)
    (tmp_path / "stream").mkdir()
    streamed = wg.winograd_file(src, tmp_path / "stream" / "unet.onnx", shapes)
    assert [r.node for r in streamed] == [r.node for r in in_memory] == ["conv1", "conv2"]
    assert (tmp_path / "stream" / "unet.onnx.data").exists() and src.exists()  # the source is left alone
    np.testing.assert_array_equal(run(tmp_path / "stream" / "unet.onnx", x), run(tmp_path / "mem" / "unet.onnx", x))
    direct = run(src, x)
    np.testing.assert_allclose(run(tmp_path / "stream" / "unet.onnx", x), direct, atol=1e-5 * np.abs(direct).max())


def test_modules_on_demand_have_the_weights_of_random_components(tmp_path):
    """random_to_disk keeps the construction order, so a module loaded on demand is the module
    random_components builds (what the tests and benches rebuild and compare with)."""
    import torch

    from export.lcm.sources import random_components, random_to_disk

    eager = random_components("tiny", 3)
    lazy = random_to_disk("tiny", 3, tmp_path)
    for part in ("text_encoder", "unet", "vae", "taesd"):
        with lazy.using(part) as module:
            want = getattr(eager, part).state_dict()
            got = module.state_dict()
            assert got.keys() == want.keys()
            assert all(torch.equal(got[k], want[k]) for k in want), part
        assert lazy.config(part) == eager.config(part)


def test_export_from_a_diffusers_folder_loads_one_component_at_a_time(tmp_path, tiny_src):
    """A diffusers LCM folder (what a hub id downloads to) exports through the on-demand loaders and is
    verified against it; the report names the stages it measured."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler
    from transformers import CLIPTokenizer

    from export.recipes import lcm_onnx

    tok = CLIPTokenizer(vocab=tiny_src.vocab, merges=tiny_src.merges, model_max_length=77)
    LatentConsistencyModelPipeline(
        vae=tiny_src.vae, text_encoder=tiny_src.text_encoder, tokenizer=tok, unet=tiny_src.unet,
        scheduler=LCMScheduler.from_config(tiny_src.scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False).save_pretrained(tmp_path / "My_LCM")
    out = lcm_onnx.run(lcm_onnx.Config(source=str(tmp_path / "My_LCM"), out=tmp_path / "out", precisions="fp32",
                                       no_taesd=True, threads=2, no_progress=True, verify_size=64))
    report = json.loads((out / "report.json").read_text())
    assert report["precisions"]["fp32"]["image"]["max_diff_255"] <= 2
    assert report["model_id"] == "my-lcm"
    stages = report["resources"]["stages"]
    assert {"source", "export fp32 unet", "verify pytorch", "verify fp32"} <= set(stages)
    assert all(s["seconds"] >= 0 and s["peak_rss_bytes"] > 0 for s in stages.values())
    assert not list(tmp_path.glob(".out.*"))  # the scratch folder and the temp folder are gone


def test_readme_export_command_runs_as_written(tmp_path):
    """README's `edge-run export lcm ... --precisions fp32,int8-winograd --default-precision int8-winograd
    --add --model-id ...` (tiny random weights in place of the hub id; no --threads, as written): it exports,
    installs and pins the model, and the report carries each stage's seconds and peak RSS."""
    home = tmp_path / "home"
    env = dict(os.environ, EDGE_HOME=str(home), PYTHONPATH=str(ROOT))
    env.pop("EDGE_THREADS", None)
    cmd = [sys.executable, "-m", "edge.cli", "export", "lcm", "--random-init", "tiny", "--precisions",
           "fp32,int8-winograd", "--default-precision", "int8-winograd", "--add", "--model-id", "lcm-readme-onnx"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exported:" in done.stdout
    lock = (home / "models.lock").read_text()
    assert 'id = "lcm-readme-onnx"' in lock
    installed = home / "models" / "lcm-readme-onnx"
    manifest = json.loads((installed / "edge-model.json").read_text())
    assert manifest["precision"] == "int8-winograd"
    resources = json.loads((tmp_path / "lcm-readme-onnx" / "report.json").read_text())["resources"]
    assert resources["peak_rss_bytes"] > 0 and resources["seconds"] > 0
    assert "quantize int8-winograd unet" in resources["stages"]


@pytest.mark.parametrize("op_types", [("MatMul", "Gemm"), ("MatMul", "Gemm", "Conv")])
def test_dynamic_int8_streamed_equals_quantize_dynamic(tmp_path, monkeypatch, op_types):
    """A model over protobuf's limit is quantized by onnxruntime's own quantizer reading one weight at a time
    (not quantize_dynamic, which holds the model three times): the same graph, the same numbers."""
    from export import quantize

    src = conv_model(tmp_path / "fp32" / "unet.onnx", per_tensor_files=False)
    x = np.random.default_rng(3).standard_normal((1, 8, 32, 32)).astype(np.float32)
    (tmp_path / "whole").mkdir()
    quantize.dynamic_int8(src, tmp_path / "whole" / "unet.onnx", op_types=op_types, nodes_to_exclude=["conv2"])
    monkeypatch.setattr(quantize, "PROTOBUF_LIMIT", 0)
    (tmp_path / "streamed").mkdir()
    quantize.dynamic_int8(src, tmp_path / "streamed" / "unet.onnx", op_types=op_types, nodes_to_exclude=["conv2"])
    assert sorted(p.name for p in (tmp_path / "streamed").iterdir()) == ["unet.onnx", "unet.onnx.data"]
    np.testing.assert_array_equal(run(tmp_path / "streamed" / "unet.onnx", x), run(tmp_path / "whole" / "unet.onnx", x))
    assert os.getcwd() != str(src.parent)  # the quantizer's working folder was given back


def test_static_qdq_streamed_equals_quantize_static(tmp_path, monkeypatch):
    """A model over protobuf's limit: onnxruntime's calibrator, then its QDQ quantizer on the weights on disk
    (quantize_static overlaps the two with the model loaded whole): the same numbers."""
    from export import quantize

    src = conv_model(tmp_path / "fp32" / "unet.onnx", per_tensor_files=False)
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.standard_normal((1, 8, 32, 32)).astype(np.float32)} for _ in range(3)]
    (tmp_path / "whole").mkdir()
    quantize.static_qdq(src, tmp_path / "whole" / "unet.onnx", quantize.FeedsReader(feeds))
    monkeypatch.setattr(quantize, "PROTOBUF_LIMIT", 0)
    (tmp_path / "streamed").mkdir()
    quantize.static_qdq(src, tmp_path / "streamed" / "unet.onnx", quantize.FeedsReader(feeds))
    assert sorted(p.name for p in (tmp_path / "streamed").iterdir()) == ["unet.onnx", "unet.onnx.data"]
    np.testing.assert_array_equal(run(tmp_path / "streamed" / "unet.onnx", feeds[0]["x"]),
                                  run(tmp_path / "whole" / "unet.onnx", feeds[0]["x"]))


def test_fp16_sessions_keep_the_weights_float16(tmp_path):
    """The sessions the runtime (and so verification) opens hold an fp16 model's weights as float16: onnxruntime
    would otherwise rewrite each one feeding a CPU kernel without float16 (Conv, MatMul) into a float32 copy at
    load (the fp16 SD1.5 UNet peaked at 6.2 GB loading); the outputs stay those of the float16 model."""
    import onnx
    import onnxruntime as ort

    from edge.devices import session_options
    from export import quantize

    src = conv_model(tmp_path / "fp32" / "unet.onnx", per_tensor_files=False)
    (tmp_path / "fp16").mkdir()
    half = quantize.fp16(src, tmp_path / "fp16" / "unet.onnx")
    x = np.random.default_rng(6).standard_normal((1, 8, 32, 32)).astype(np.float32)
    so = session_options(1)
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    got = ort.InferenceSession(str(half), sess_options=so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    weights = onnx.load(so.optimized_model_filepath).graph.initializer
    assert {t.name for t in weights} == {"w1", "b1", "w2", "m"}
    assert {onnx.TensorProto.DataType.Name(t.data_type) for t in weights} == {"FLOAT16"}
    want = run(src, x)
    np.testing.assert_allclose(got, want, atol=1e-2 * np.abs(want).max())


def test_fp16_streamed_equals_in_memory(tmp_path, monkeypatch):
    """A model over protobuf's limit is converted by onnxruntime's float16 converter on its graph, each weight
    converted (its convert_np_to_float16) while it is copied: the same model as converting it whole."""
    import onnx

    from export import quantize

    src = conv_model(tmp_path / "fp32" / "unet.onnx", per_tensor_files=False)
    x = np.random.default_rng(5).standard_normal((1, 8, 32, 32)).astype(np.float32)
    (tmp_path / "whole").mkdir()
    quantize.fp16(src, tmp_path / "whole" / "unet.onnx")
    monkeypatch.setattr(quantize, "PROTOBUF_LIMIT", 0)
    (tmp_path / "streamed").mkdir()
    quantize.fp16(src, tmp_path / "streamed" / "unet.onnx")
    assert sorted(p.name for p in (tmp_path / "streamed").iterdir()) == ["unet.onnx", "unet.onnx.data"]
    whole = onnx.load(str(tmp_path / "whole" / "unet.onnx"))
    streamed = onnx.load(str(tmp_path / "streamed" / "unet.onnx"))
    assert {t.name: t.data_type for t in streamed.graph.initializer} == {t.name: t.data_type for t in whole.graph.initializer}
    for a, b in zip(sorted(whole.graph.initializer, key=lambda t: t.name),
                    sorted(streamed.graph.initializer, key=lambda t: t.name)):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
    np.testing.assert_array_equal(run(tmp_path / "streamed" / "unet.onnx", x), run(tmp_path / "whole" / "unet.onnx", x))
