"""ONNX chat engine: a decoder-with-past ONNX graph (``edge-run export llm-onnx``) run by onnxruntime,
with the KV cache in numpy, the `tokenizers` tokenizer and the model's chat template (jinja2) from the
exported folder. Same interface as the GGUF engine (:class:`edge.chat.engine.LlamaChatEngine`), so the
scheduler, API, CLI and server use it unchanged; the session comes from :func:`edge.devices.make_session`
(the execution provider for ``device``).

Each of ``slots`` KV caches (a :class:`edge.chat.slots.SlotPool`; a slot's state is its past key/values)
keeps its tokens, prompt and answer, between jobs; a new job takes the free slot with the longest
matching prefix, so a multi-turn chat only prefills the new turn.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge.chat.request import ChatRequest, ChatResult
from edge.chat.sampling import Sampling
from edge.chat.slots import MAX_CTX, PREFILL_CHUNK, Slot, SlotPool, check_context
from edge.errors import BadRequest, EdgeError, ModelNotInstalled
from edge.jobs import Step, StepGen
from edge.manifest import MANIFEST_FILE, ChatManifest, read

REPEAT_LAST_N = 64  # llama-cpp-python's default window for repeat_penalty

Past = dict[str, np.ndarray]
"""A slot's state: the graph's ``present.*`` outputs, fed back as ``past_key_values.*``."""


class OnnxChatEngine:
    """A chat model exported to ONNX (``task = chat``, ``format = onnx``)."""

    def __init__(self, folder: str | Path, *, threads: int, device: str = "auto", slots: int = 1,
                 n_ctx: int = 4096, model_id: str = "", manifest: ChatManifest | None = None):
        """Open ``folder``'s ONNX chat export; ``manifest`` is its typed manifest when the caller already read
        it (InstalledModel.manifest), else it is read here (edge.manifest.read, checked)."""
        from tokenizers import Tokenizer

        from edge.devices import make_session

        folder = Path(folder)
        m = manifest if isinstance(manifest, ChatManifest) else read(folder, model_id=model_id or None, task="chat")
        if m.kv is None or not (folder / "tokenizer.json").is_file():
            raise ModelNotInstalled(f"{str(folder)!r} is not an ONNX chat export (needs {MANIFEST_FILE} with `kv`, "
                                    "tokenizer.json, model.onnx); re-export it with `edge-run export llm-onnx`.",
                                    param="model")
        self.manifest: ChatManifest = m
        self.model_id = model_id
        self.model_ctx = int(m.context_length or MAX_CTX)  # the longest window the model takes
        self.n_ctx = min(int(n_ctx), self.model_ctx)
        self.slots = max(1, int(slots))
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.session = make_session(folder / m.model_file, threads=threads, device=device)
        self.n_layers, self.n_kv, self.head_dim = m.kv.num_layers, m.kv.num_kv_heads, m.kv.head_dim
        self.bos_id = m.bos_token_id
        self.add_bos = m.add_bos
        self.eos_ids = set(m.eos_token_ids)
        self.bos_text = m.bos_token or ""
        self.eos_text = m.eos_token or ""
        self._template = self._compile_template(m.chat_template)
        self._past_names = [f"past_key_values.{i}.{kv}" for i in range(self.n_layers) for kv in ("key", "value")]
        self._output_names = ["logits"] + [f"present.{i}.{kv}" for i in range(self.n_layers) for kv in ("key", "value")]
        self.pool: SlotPool[Past] = SlotPool(None for _ in range(self.slots))

    @classmethod
    def load(cls, model, *, threads: int, device: str = "auto", slots: int = 1, n_ctx: int = 4096):
        """Load an InstalledModel (task chat, format onnx)."""
        return cls(model.dir, threads=threads, device=device, slots=slots, n_ctx=n_ctx, model_id=model.id,
                   manifest=getattr(model, "manifest", None))

    def close(self) -> None:
        """Release the ORT session and the KV caches now."""
        self.session = None
        self.pool.close()

    # -- prompt ---------------------------------------------------------------------------------
    @staticmethod
    def _compile_template(source: str | None):
        if not source:
            return None
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(source)

    def render(self, messages: list[dict]) -> str:
        """The chat template applied to ``messages`` with the generation prompt, as transformers does."""
        if self._template is None:
            raise EdgeError(f"model {self.model_id!r} has no chat template; re-export it from a folder with one.")
        try:
            return self._template.render(messages=messages, add_generation_prompt=True,
                                         bos_token=self.bos_text, eos_token=self.eos_text)
        except Exception as e:  # the template's raise_exception(), jinja errors
            raise BadRequest(f"the model's chat template rejected these messages: {e}", param="messages") from None

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if add_bos and self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids = [int(self.bos_id)] + ids
        return list(ids)

    # -- the jobs -------------------------------------------------------------------------------
    def chat_steps(self, req: ChatRequest) -> StepGen[ChatResult]:
        """Answer ``req`` (checked by ChatRequest.check at the door): yields Step("prefill") per chunk and
        Step("token", data=text) per token."""
        if req.json_schema is not None:
            raise BadRequest("`json_schema` (grammar-constrained output) needs a GGUF model; this model is ONNX.",
                             param="json_schema")
        if req.toolset is not None and req.toolset.active:
            raise BadRequest("`tools` need a GGUF model (a tool call is constrained by a grammar, which this ONNX "
                             "engine cannot apply); use a GGUF chat model, or tool_choice \"none\".", param="tools")
        tokens = self.encode(self.render(req.messages), add_bos=True)
        return (yield from self._generate_steps(tokens, req))

    def complete_steps(self, prompt: str, req: ChatRequest) -> StepGen[ChatResult]:
        """Raw text completion of ``prompt`` (no chat template); ``prompt`` and ``req`` are checked at the door."""
        return (yield from self._generate_steps(self.encode(prompt, add_bos=True), req))

    def _generate_steps(self, tokens: list[int], req: ChatRequest) -> StepGen[ChatResult]:
        # 1. check the prompt fits (the one check only the engine can make: it needs the tokens)
        limit = check_context(len(tokens), self.n_ctx, req.max_tokens, model_ctx=self.model_ctx)
        with self.pool.take(tokens) as slot:
            # 2. prefill (reusing the slot's cached prefix), one step per chunk
            logits = yield from self._prefill(slot, tokens)
            # 3. decode: sample, stream text (holding back partial UTF-8 and stop-string prefixes)
            rng = np.random.default_rng(req.seed)
            sampling = req.sampling()
            out_ids: list[int] = []
            sent, finish, text = 0, "length", ""
            stops = [s for s in req.stop if s]
            while len(out_ids) < limit:
                tok = self._sample(logits, sampling, rng, tokens + out_ids)
                if tok in self.eos_ids:
                    finish = "stop"
                    break
                out_ids.append(tok)
                text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
                cut = _find_stop(text, stops)
                if cut is not None:
                    text, finish = text[:cut], "stop"
                    if len(text) > sent:
                        yield Step("token", data=text[sent:], tokens=1)
                        sent = len(text)
                    else:
                        yield Step("token", data="", tokens=1)
                    break
                safe = _safe_len(text, stops)
                piece = text[sent:safe]
                sent = max(sent, safe)
                if len(out_ids) < limit:
                    logits = self._forward(slot, [tok])
                yield Step("token", data=piece, tokens=1)
            if len(text) > sent:  # flush what was held back as a possible stop-string start
                yield Step("token", data=text[sent:], tokens=0)
            # 4. result
            return ChatResult(text=text, prompt_tokens=len(tokens),
                              completion_tokens=len(out_ids), finish_reason=finish, model=self.model_id,
                              seed=req.seed)

    # -- KV cache -------------------------------------------------------------------------------
    def _prefill(self, slot: Slot[Past], tokens: list[int]):
        cached = slot.reusable(tokens, keep=1)
        if slot.state is None or cached == 0:
            slot.state, slot.tokens = None, []
            cached = 0
        elif cached < len(slot.tokens):  # drop the stale tail
            slot.state = {k: np.ascontiguousarray(v[:, :, :cached]) for k, v in slot.state.items()}
            slot.tokens = slot.tokens[:cached]
        todo = tokens[cached:]
        chunks = [todo[i:i + PREFILL_CHUNK] for i in range(0, len(todo), PREFILL_CHUNK)]
        logits = None
        for i, chunk in enumerate(chunks):
            logits = self._forward(slot, chunk)
            yield Step("prefill", index=i + 1, total=len(chunks))
        return logits

    def _forward(self, slot: Slot[Past], new: list[int]) -> np.ndarray:
        """Run the graph on ``new`` tokens after the slot's cache; returns the last position's logits."""
        if self.session is None:
            raise EdgeError("the model was unloaded")
        past_len = len(slot.tokens)
        past = slot.state or {n: np.zeros((1, self.n_kv, 0, self.head_dim), np.float32) for n in self._past_names}
        feeds = {"input_ids": np.asarray([new], np.int64),
                 "attention_mask": np.ones((1, past_len + len(new)), np.int64),
                 "position_ids": np.arange(past_len, past_len + len(new), dtype=np.int64)[None], **past}
        outs = self.session.run(self._output_names, feeds)
        slot.state = dict(zip(self._past_names, outs[1:]))
        slot.tokens = slot.tokens + list(new)
        return outs[0][0, -1]

    # -- sampling (llama.cpp's order: repeat penalty, top-k, top-p, min-p, temperature) -----------
    @staticmethod
    def _sample(logits: np.ndarray, req: Sampling, rng: np.random.Generator, history: list[int]) -> int:
        x = logits.astype(np.float64).copy()
        if req.repeat_penalty and req.repeat_penalty != 1.0 and history:
            ids = np.unique(np.asarray(history[-REPEAT_LAST_N:]))
            vals = x[ids]
            x[ids] = np.where(vals > 0, vals / req.repeat_penalty, vals * req.repeat_penalty)
        if req.temperature <= 0:
            return int(np.argmax(x))
        order = np.argsort(-x, kind="stable")
        if req.top_k and req.top_k > 0:
            order = order[: req.top_k]
        probs = _softmax(x[order])
        if req.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), req.top_p) + 1)
            order, probs = order[:keep], probs[:keep]
        if req.min_p > 0.0:
            mask = probs >= req.min_p * probs[0]
            order = order[mask]
        p = _softmax(x[order] / req.temperature)
        return int(order[rng.choice(len(order), p=p)])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _find_stop(text: str, stops: list[str]) -> int | None:
    hits = [text.find(s) for s in stops if s in text]
    return min(hits) if hits else None


def _safe_len(text: str, stops: list[str]) -> int:
    """How much of ``text`` can be streamed: not a trailing partial UTF-8 character, nor a suffix that
    could still become a stop string."""
    n = len(text)
    while n and text[n - 1] == "\ufffd":
        n -= 1
    for s in stops:
        for k in range(min(len(s) - 1, n), 0, -1):
            if text[n - k:n] == s[:k]:
                n -= k
                break
    return n
