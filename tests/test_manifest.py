"""edge/manifest.py: one typed, versioned edge-model.json for every task."""

from __future__ import annotations

import json

import pytest

from edge import manifest as M
from edge.errors import BadRequest, ModelNotInstalled

CHAT_ONNX = {"task": "chat", "format": "onnx", "recipe": "llm-onnx", "model_file": "model.onnx",
             "kv": {"num_layers": 2, "num_kv_heads": 2, "head_dim": 16, "vocab_size": 384}, "context_length": 64,
             "bos_token_id": 1, "bos_token": "<s>", "eos_token": "</s>", "eos_token_ids": [2], "add_bos": False,
             "chat_template": "{{ messages }}", "precision": "fp32", "source": {"kind": "random-init"}}
CHAT_GGUF = {"task": "chat", "format": "gguf", "recipe": "llm", "architecture": "LlamaForCausalLM",
             "quants": {"q8_0": "model.q8_0.gguf"}, "files": [{"name": "model.q8_0.gguf", "sha256": "0" * 64,
                                                               "size": 1}]}
IMAGE = {"schema": 1, "id": "lcm-tiny-random", "task": "image", "format": "onnx", "family": "lcm", "recipe": "lcm",
         "precision": "fp32", "precisions": {"fp32": {"unet": "fp32/unet.onnx", "text_encoder": "fp32/te.onnx",
                                                      "vae_decoder": "fp32/vae_decoder.onnx"}},
         "tokenizer": "tokenizer/tokenizer.json", "scheduler": {"original_inference_steps": 50},
         "unet": {"time_cond_proj_dim": 32, "in_channels": 4, "cross_attention_dim": 32},
         "vae": {"scaling_factor": 0.18215, "scale_factor": 8, "latent_channels": 4},
         "decoders": {"vae": {"scaling_factor": 0.18215}, "taesd": {"scaling_factor": 1.0}},
         "default_decoder": "vae", "size_multiple": 8, "default_size": 64, "load_bytes": {"fp32": 10759472},
         "verify": {"fp32": {"image_psnr": 89.0}}}
SEGMENT = {"task": "segment", "format": "onnx", "family": "mobilesam", "recipe": "npu", "precision": "a16w8",
           "components": {"encoder": "a16w8", "decoder": "a16w8"}, "inputs": {"image_size": 1024},
           "npu": {"schema": 1, "target": "qnn-htp", "default_quant": "a16w8", "schemes": ["a16w8"], "components": {
               "decoder_head.onnx": {"role": "decoder_head", "quant": "fp32", "static": False, "device": "cpu"},
               "decoder.onnx": {"role": "decoder", "quant": "a16w8", "static": True, "device": "npu",
                                "inputs": {"prompt_tokens": [1, "num_tokens", 256]}, "adapter": "sam_low_res_decoder",
                                "head": "decoder_head.onnx", "per_call_dims": {"num_tokens": 21}}}}}


@pytest.mark.parametrize("doc, cls", [(CHAT_ONNX, M.ChatManifest), (CHAT_GGUF, M.ChatManifest),
                                      (IMAGE, M.ImageManifest), (SEGMENT, M.SegmentManifest)])
def test_each_task_loads_into_its_class(tmp_path, doc, cls):
    (tmp_path / M.MANIFEST_FILE).write_text(json.dumps(doc))
    m = M.read(tmp_path)
    assert type(m) is cls and m.task == doc["task"] and m.version == M.VERSION
    assert M.read(tmp_path, task=doc["task"]) == m


def test_typed_fields_are_typed():
    img = M.Manifest.from_dict(IMAGE)
    assert isinstance(img, M.ImageManifest)
    assert img.unet.time_cond_proj_dim == 32 and img.vae.scale_factor == 8 and img.default_size == 64
    assert img.decoders["taesd"].scaling_factor == 1.0 and img.loaded_bytes() == 10759472
    chat = M.Manifest.from_dict(CHAT_ONNX)
    assert isinstance(chat, M.ChatManifest) and chat.kv is not None and chat.kv.head_dim == 16
    seg = M.Manifest.from_dict(SEGMENT)
    assert seg.npu is not None and seg.npu.components["decoder.onnx"].per_call_dims == {"num_tokens": 21}
    assert seg.npu.components["decoder_head.onnx"].device == "cpu"


@pytest.mark.parametrize("patch, field, fix", [
    ({"default_size": "512"}, "`default_size` must be an integer, got '512'", '"default_size": 512'),
    ({"size_multiple": 0}, "`size_multiple` must be >= 1, got 0", '"size_multiple": 8'),
    ({"unet": {"time_cond_proj_dim": "x"}}, "`unet.time_cond_proj_dim` must be an integer", "re-export"),
    ({"decoders": {"vae": {"scaling_factor": True}}}, "`decoders.vae.scaling_factor` must be a number", "re-export"),
    ({"precisions": {"fp32": ["a"]}}, "`precisions.fp32` must be a JSON object", "re-export"),
    ({"load_bytes": {"fp32": -1}}, "`load_bytes.fp32` must be >= 0", "re-export"),
    ({"version": M.VERSION + 1}, "this edge-run reads manifests up to version", "Upgrade edge-run"),
    ({"npu": {"components": {"a.onnx": {"device": "gpu"}}}}, "`npu.components.a.onnx.device` must be one of npu, cpu",
     "re-export"),
])
def test_a_wrong_field_names_file_field_and_fix(tmp_path, patch, field, fix):
    (tmp_path / M.MANIFEST_FILE).write_text(json.dumps({**IMAGE, **patch}))
    with pytest.raises(BadRequest) as e:
        M.read(tmp_path, model_id="lcm-x")
    msg = str(e.value)
    assert msg.startswith(f"model 'lcm-x': {M.MANIFEST_FILE}: ") and field in msg and fix in msg, msg
    assert e.value.param == M.MANIFEST_FILE
    with pytest.raises(BadRequest, match=str(tmp_path)):  # no model id: the path names the file
        M.read(tmp_path)


def test_the_task_the_caller_expects():
    with pytest.raises(BadRequest, match="`task` is 'image', but a chat model was expected"):
        M.ChatManifest.from_dict(IMAGE)
    untasked = {k: v for k, v in CHAT_ONNX.items() if k != "task"}  # tests/export_llm writes these
    assert type(M.Manifest.from_dict(untasked)) is M.Manifest
    assert isinstance(M.parse(json.dumps(untasked), task="chat"), M.ChatManifest)


@pytest.mark.parametrize("doc", [CHAT_ONNX, CHAT_GGUF, IMAGE, SEGMENT])
def test_round_trip_write_load(tmp_path, doc):
    m = M.Manifest.from_dict({**doc, "future_field": {"kept": [1, 2]}})
    path = M.write(tmp_path, m)
    assert path == tmp_path / M.MANIFEST_FILE and [p.name for p in tmp_path.iterdir()] == [M.MANIFEST_FILE]
    back = M.load(path)
    assert back == m and back.extra == {"future_field": {"kept": [1, 2]}}
    assert json.loads(path.read_text())["version"] == M.VERSION
    for k, v in doc.items():  # every field the writer gave survives (the LCM recipe's `schema` is `version`)
        assert json.loads(path.read_text())["version" if k == "schema" else k] == v


def test_write_checks_a_dict_first(tmp_path):
    with pytest.raises(BadRequest, match="`size_multiple` must be an integer"):
        M.write(tmp_path, {**IMAGE, "size_multiple": "8"})
    assert not list(tmp_path.iterdir())


def test_an_old_manifest_without_optional_fields_gets_the_defaults():
    old = {"task": "image", "format": "onnx", "precisions": {"fp32": {}}, "unet": {"time_cond_proj_dim": 256},
           "vae": {"scaling_factor": 0.18215, "scale_factor": 8}, "scheduler": {}}
    m = M.Manifest.from_dict(old)
    assert isinstance(m, M.ImageManifest) and m.version == 1
    assert (m.default_size, m.size_multiple, m.default_decoder) == (M.DEFAULT_SIZE, M.SIZE_MULTIPLE, "vae")
    assert m.vae.latent_channels == 4 and m.precision == "fp32" and m.tokenizer == "tokenizer/tokenizer.json"
    assert m.loaded_bytes() is None and m.npu is None
    sam = M.Manifest.from_dict({"task": "segment", "format": "onnx", "precision": "int8"})
    assert sam.components == {} and sam.precision == "int8"
    gguf = M.Manifest.default("chat", "gguf")
    assert isinstance(gguf, M.ChatManifest) and gguf.format == "gguf" and gguf.eos_token_ids == []


def test_missing_file_and_size_cap(tmp_path):
    with pytest.raises(ModelNotInstalled, match="edge-model.json is missing"):
        M.read(tmp_path, model_id="m")
    (tmp_path / M.MANIFEST_FILE).write_bytes(b" " * (M.MAX_BYTES + 1))
    with pytest.raises(BadRequest, match="over the"):
        M.read(tmp_path)
