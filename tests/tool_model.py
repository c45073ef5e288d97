"""GGUF copies of the default chat model with edited metadata, installed into an EDGE_HOME: a tools-aware
chat template (Qwen2.5's Hermes-style one, over SmolLM2's ChatML tokens) and recommended sampling keys
(``general.sampling.*``). Written with the ``gguf`` package's own metadata copier."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

TOOLS_MODEL = "smollm2-tools-test"
SAMPLING_MODEL = "smollm2-sampling-test"

QWEN_TOOLS_TEMPLATE = """{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}
{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- for message in messages %}
{%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
{%- elif message.role == "assistant" %}
{{- '<|im_start|>' + message.role }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == "tool" %}
{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}
{%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""
"""Qwen2.5-Instruct's chat template (tools rendered into the system turn, calls as <tool_call> JSON, results
as <tool_response> user turns), as transformers and llama.cpp render it."""


def gguf_copy(src: Path, dst: Path, *, chat_template: str | None = None, sampling: dict[str, float] | None = None
              ) -> Path:
    """Copy the GGUF ``src`` to ``dst`` with a new chat template and/or ``general.sampling.*`` keys
    (``{"temp": 0.1, "top_k": 3}`` -> general.sampling.temp, general.sampling.top_k)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(str(src), "r")
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    new: dict[str, Any] = {}
    if chat_template is not None:
        new[gguf.Keys.Tokenizer.CHAT_TEMPLATE] = MetadataDetails(gguf.GGUFValueType.STRING, chat_template)
    for key, value in (sampling or {}).items():
        kind = gguf.GGUFValueType.INT32 if key in ("top_k", "penalty_last_n") else gguf.GGUFValueType.FLOAT32
        new[f"general.sampling.{key}"] = MetadataDetails(kind, value)
    writer = gguf.GGUFWriter(str(dst), arch=arch, endianess=reader.endianess)
    alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = alignment.contents()
    copy_with_new_metadata(reader, writer, new, [])
    return dst


def install_gguf_copy(home: Path, src: Path, model_id: str, **edits: Any) -> str:
    """Install a :func:`gguf_copy` of ``src`` into ``home`` as chat model ``model_id`` through the registry."""
    from edge.config import Settings
    from edge.registry import add_local_model

    with tempfile.TemporaryDirectory(dir=home) as tmp:
        gguf_copy(src, Path(tmp) / "model.gguf", **edits)
        add_local_model(Settings.from_env(env={}, home=home), tmp, model_id=model_id, task="chat", fmt="gguf",
                        license="Apache-2.0", source={"edited_from": src.name})
    return model_id


def edited_home_cached() -> Path:
    """An EDGE_HOME in the tests' cache holding the default chat model and two edited copies of it:
    TOOLS_MODEL (the Qwen2.5 tools template) and SAMPLING_MODEL (recommended greedy sampling, temp 0 and
    top_k 1, in its general.sampling.* keys). Built once, rebuilt when this file changes."""
    import hashlib
    import os
    import shutil

    from support import CACHE, CHAT_MODEL, chat_model_cached

    src = chat_model_cached()
    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    home = CACHE / f"edited-home-{key}"
    if not (home / "ready").is_file():
        for old in CACHE.glob("edited-home-*"):
            shutil.rmtree(old, ignore_errors=True)
        home.mkdir(parents=True)
        install_gguf_copy(home, src, TOOLS_MODEL, chat_template=QWEN_TOOLS_TEMPLATE)
        install_gguf_copy(home, src, SAMPLING_MODEL, sampling={"temp": 0.0, "top_k": 1})
        dest = home / "models" / CHAT_MODEL
        dest.mkdir(parents=True)
        os.link(src, dest / "model.gguf")
        (home / "ready").write_text("ok")
    return home
