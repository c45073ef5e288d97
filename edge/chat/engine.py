"""GGUF chat engine over llama.cpp (through llama-cpp-python's bindings), with batched decoding.

A loaded model is one llama.cpp model and one context (edge.chat.batch.BatchDecoder) with a KV stream
per *slot* (:class:`edge.chat.slots.SlotPool`). Each slot keeps its stream between jobs and a new job
takes the free slot with the longest matching prompt prefix, so a multi-turn chat does not re-evaluate
the whole conversation. The running chats decode together: one llama_decode per round of their token
steps, as llama-server does, and the weights, compute buffers and logits are shared, not per slot.

Prefix reuse and determinism: llama.cpp gives bit-identical logits however a prompt is split into
batches of two or more tokens and whatever other sequences share a batch. A job reuses the longest
common prefix with the *prompt* tokens its slot evaluated (never the decoded answer) and always
evaluates at least its last two prompt tokens together, so the same prompt gets the same greedy
answer whatever the slot served before and however many chats run beside it (tests/chat checks both).

A job is a step generator: it yields after each prefill piece and after each answer token.

One decoding thread per process: llama.cpp's OpenMP workers spin at their barriers only while libgomp
manages no more threads than there are CPUs, and every thread that has decoded keeps a team of workers.
The scheduler steps every chat on its interactive lane's one thread; a program that embeds the Runtime and
also decodes with llama.cpp on a thread of its own halves both (measured on 2 cores: 124 -> 57 tok/s).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from edge.chat import tools
from edge.chat.answer import AnswerText
from edge.chat.batch import BatchDecoder, KvShape, detokenize_piece, prompt_piece
from edge.chat.request import ChatRequest, ChatResult
from edge.chat.sampling import Sampling
from edge.chat.slots import SlotPool, check_context
from edge.errors import BadRequest, EdgeError
from edge.jobs import Step, StepGen


class LlamaChatEngine:
    """A GGUF model served through llama.cpp, its slots decoding in one batch."""

    def __init__(self, model_path: str, *, threads: int, slots: int = 2, n_ctx: int = 4096, model_id: str = ""):
        import llama_cpp._internals as internals
        from llama_cpp._logger import set_verbose

        set_verbose(False)  # llama.cpp's load and context logs (llama_cpp.Llama(verbose=False) does the same)
        self.model_path = model_path
        self.model_id = model_id
        self.threads = threads
        self.threads_now = threads  # what the scheduler allows for the next steps (set_threads)
        self.n_ctx = n_ctx
        self.slots = slots
        self.model = internals.LlamaModel(path_model=model_path, params=model_params(), verbose=False)
        # the context and every slot's stream now, not on first use: the scheduler measures the footprint
        # around load() (the RAM budget must see the KV cache), and a burst of chats must not pay for it.
        metadata = self.model.metadata()
        self.decoder = BatchDecoder(self.model, n_ctx=n_ctx, slots=slots, threads=threads,
                                    attention=KvShape.from_metadata(metadata).attention)
        self.pool: SlotPool[int] = SlotPool(range(slots))  # a slot's state is its sequence id
        self.formatter = self._make_formatter(self.model, metadata, model_path)
        self.native_tools = tools.template_knows_tools(self.formatter.template)
        self.recommended = Sampling.from_gguf(metadata, source=model_id or model_path)
        self.eos_text = token_text(self.model, self.model.token_eos())
        self.n_ctx_train = self.model.n_ctx_train()  # the window the model was trained for

    @classmethod
    def load(cls, model, *, threads: int, device: str = "auto", slots: int = 2, n_ctx: int = 4096):
        """Load an InstalledModel (task chat, format gguf)."""
        path = next(iter(model.files.values()))
        return cls(str(path), threads=threads, slots=slots, n_ctx=n_ctx, model_id=model.id)

    # -- setup ---------------------------------------------------------------------------------
    @staticmethod
    def _make_formatter(model, metadata: dict, path: str):
        """The model's own chat template from the GGUF metadata (tokenizer.chat_template)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = metadata.get("tokenizer.chat_template")
        if not template:
            raise EdgeError(f"{path}: the GGUF has no tokenizer.chat_template; re-export it with a "
                            "chat template (edge-run export llm ...).")
        eos = model.token_eos()
        return Jinja2ChatFormatter(template=template, eos_token=token_text(model, eos),
                                   bos_token=token_text(model, model.token_bos()), stop_token_ids=[eos])

    def close(self) -> None:
        """Free the llama.cpp context and the model now."""
        if self.pool.slots[0].state is None:
            return
        self.pool.close()
        self.decoder.close()
        self.model.close()

    def _loaded(self):
        """The llama.cpp model, or an EdgeError once the engine was closed."""
        if self.pool.slots[0].state is None:
            raise EdgeError(f"model {self.model_id!r} was unloaded")
        return self.model

    def set_threads(self, n: int) -> None:
        """Threads for the next steps (the scheduler's count for what the CPU can give now). llama.cpp's
        threads spin at barriers, so a thread whose core another program holds stalls every other one:
        fewer threads are then faster."""
        self.threads_now = max(1, min(int(n), self.threads))

    # -- prompt ---------------------------------------------------------------------------------
    def tokenize_prompt(self, messages: list[dict], toolset: tools.ToolSet | None = None) -> tuple[list[int], Any]:
        """Render the chat template (with the tools: the template's own way, else edge.chat.tools' generic
        system prompt) and tokenize exactly as create_chat_completion does."""
        messages, specs = tools.prompt_messages(messages, toolset, native=self.native_tools)
        try:
            rendered = self.formatter(messages=messages, tools=specs)
        except Exception as e:  # the template's raise_exception(), jinja errors
            raise BadRequest(f"the model's chat template rejected these messages: {e}", param="messages") from None
        tokens = self._loaded().tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special,
                                         special=True)
        return tokens, rendered

    # -- the job --------------------------------------------------------------------------------
    def chat_steps(self, req: ChatRequest) -> StepGen[ChatResult]:
        """Answer ``req`` (checked by ChatRequest.check at the door): yields Step("prefill") per prompt piece
        before the last and Step("token", data=text) per answer token."""
        tokens, _rendered = self.tokenize_prompt(req.messages, req.toolset)
        result = yield from self._generate_steps(tokens, req)
        toolset = req.toolset
        if toolset is not None and toolset.active and result.finish_reason != "length":
            result.tool_calls = tools.parse_calls(result.text, toolset)
            if result.tool_calls:
                result.finish_reason = "tool_calls"
        return result

    def complete_steps(self, prompt: str, req: ChatRequest) -> StepGen[ChatResult]:
        """Raw text completion of ``prompt`` (no chat template), as /v1/completions needs; ``prompt`` and
        ``req`` are checked at the door."""
        tokens = self._loaded().tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        return (yield from self._generate_steps(tokens, req))

    def _generate_steps(self, tokens: list[int], req: ChatRequest) -> StepGen[ChatResult]:
        # 1. check the prompt fits (the one check only the engine can make: it needs the tokens)
        limit = check_context(len(tokens), self.n_ctx, req.max_tokens, model_ctx=self.n_ctx_train)
        grammar = self._grammar(req)
        sampling = req.sampling(self.recommended)
        answer = AnswerText(list(req.stop) + ([self.eos_text] if self.eos_text else []))
        with self.pool.take(tokens) as slot:
            keep = slot.reusable(tokens, keep=2)
            slot.tokens = tokens[:keep]
            seq = self.decoder.begin(slot.state, tokens, keep, sampling=sampling, seed=req.seed, grammar=grammar,
                                     limit=limit)
            try:
                # 2. prefill: one prompt piece per step (the batched step also advances the other chats); the
                #    step that evaluates the last piece samples the first answer token
                pieces = _count_pieces(len(tokens) - keep)
                while seq.prefilling:
                    self.decoder.step(self.threads_now)
                    slot.tokens = tokens[:seq.n_past]
                    if seq.prefilling:
                        yield Step("prefill", index=seq.pieces_done, total=pieces)
                slot.tokens = tokens  # the whole prompt is in the slot's stream
                # 3. decode: one answer token per step; a batched step samples a token for every running chat,
                #    so a step finds its token already sampled when another chat's step ran the decode
                count, finish = 0, "length"
                while True:
                    if not seq.out:
                        self.decoder.step(self.threads_now)
                        if not seq.out:
                            raise EdgeError("the batched decode sampled no token for a running chat")
                    token = seq.out.pop(0)
                    if self.decoder.is_end(token):
                        finish = "stop"
                        break
                    count += 1
                    text = answer.add(detokenize_piece(self.model, token))
                    if answer.stopped or count >= limit:
                        finish = "stop" if answer.stopped else "length"
                        yield Step("token", data=text + answer.finish(), tokens=1)
                        break
                    yield Step("token", data=text, tokens=1)
                rest = answer.finish()
                if rest:
                    yield Step("token", data=rest)
                # 4. result
                return ChatResult(text=answer.text, prompt_tokens=len(tokens), completion_tokens=count,
                                  finish_reason=finish, model=self.model_id, seed=req.seed)
            finally:
                self.decoder.end(seq)

    @staticmethod
    def _grammar(req: ChatRequest):
        """llama.cpp's grammar for ``req.json_schema`` or a required tool call: the GBNF ChatRequest.check built
        and checked in Python (edge.chat.grammar, edge.chat.tools), never a raw schema."""
        if (req.json_schema is not None and req.grammar is None) or \
                ((req.tools is not None or req.tool_choice is not None) and req.toolset is None):
            raise EdgeError("a chat request reached the engine unchecked; call ChatRequest.check() first "
                            "(Runtime and the server do).")
        gbnf = req.grammar if req.json_schema is not None else (req.toolset.grammar if req.toolset else None)
        if gbnf is None:
            return None
        from llama_cpp import LlamaGrammar

        return LlamaGrammar.from_string(gbnf, verbose=False)


_open_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def cpu_has_amx() -> bool:
    """True on CPUs with AMX tiles (Intel Sapphire Rapids and later), Linux only."""
    try:
        with open("/proc/cpuinfo") as f:
            return " amx_int8" in f.read()
    except OSError:
        return False


def open_llama(**kwargs):
    """``llama_cpp.Llama(**kwargs)``, without llama.cpp's extra weight buffer types (AMX, repack) on AMX
    CPUs: there its AMX matmul segfaults on the first batch of two or more tokens (measured with
    llama-cpp-python 0.3.36, SmolLM2 Q4_1, Xeon with AMX; upstream ggml-org/llama.cpp#20824).
    ``Llama`` takes no model-params argument, so its default-params call is wrapped for this load."""
    import llama_cpp
    import llama_cpp.llama_cpp as C

    if not cpu_has_amx():
        return llama_cpp.Llama(**kwargs)
    with _open_lock:
        default = C.llama_model_default_params

        def without_extra_buffers():
            params = default()
            params.use_extra_bufts = False
            return params

        C.llama_model_default_params = without_extra_buffers
        try:
            return llama_cpp.Llama(**kwargs)
        finally:
            C.llama_model_default_params = default


def model_params():
    """llama.cpp's default model parameters, without its extra weight buffer types (AMX, repack) on AMX CPUs
    (see :func:`open_llama`)."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    if cpu_has_amx():
        params.use_extra_bufts = False
    return params


def token_text(model, token: int) -> str:
    """The vocabulary text of ``token`` ("" for -1, llama.cpp's "no such token") of a loaded model
    (llama_cpp._internals.LlamaModel), as llama-cpp-python's own chat-format setup reads it."""
    if token == -1:
        return ""
    import llama_cpp

    return llama_cpp.llama_vocab_get_text(model.vocab, token).decode("utf-8")


def _count_pieces(n: int) -> int:
    """Prompt pieces an ``n``-token prompt remainder is evaluated in (edge.chat.batch.prompt_piece)."""
    pieces = 0
    while n > 0:
        n -= prompt_piece(n)
        pieces += 1
    return pieces
