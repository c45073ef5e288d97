"""GGUF chat engine over llama-cpp-python.

One loaded model keeps ``slots`` llama.cpp contexts (all created at load) in a
:class:`edge.chat.slots.SlotPool`. With mmap the weights are shared between contexts, so a slot
costs only its KV cache; each slot keeps its KV cache between jobs and a new job takes the free slot
with the longest matching prompt prefix, so a multi-turn chat does not re-evaluate the whole
conversation.

Prefix reuse and determinism: llama.cpp's CPU kernels give bit-identical logits however a prompt is
split into batches of two or more tokens, but a token evaluated alone (as every decoded token is)
takes another kernel and its numbers differ. So a job reuses the longest common prefix with the
*prompt* tokens its slot evaluated (never the decoded answer), and always evaluates at least its
last two prompt tokens together. The same prompt therefore gets the same greedy answer whatever the
slot served before (tests/test_chat.py checks both facts), and a multi-turn chat re-evaluates only
its previous answer and the new turn.

A job is a step generator: it yields after each prefill chunk and after each streamed token.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from edge.chat import tools
from edge.chat.request import ChatRequest, ChatResult
from edge.chat.sampling import Sampling
from edge.chat.slots import PREFILL_CHUNK, SlotPool, check_context
from edge.errors import BadRequest, EdgeError
from edge.jobs import Step, StepGen


class LlamaChatEngine:
    """A GGUF model served through llama-cpp-python."""

    def __init__(self, model_path: str, *, threads: int, slots: int = 2, n_ctx: int = 4096, model_id: str = ""):
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.model_path = model_path
        self.model_id = model_id
        self.threads = threads
        self.threads_now = threads  # what the scheduler allows for the next steps (set_threads)
        self.n_ctx = n_ctx
        self.slots = slots
        # every slot now, not on first use: the scheduler measures the footprint around load() (the RAM
        # budget must see each slot's KV cache), and a burst of chats must not pay context creation.
        # A slot's tokens are the *prompt* tokens its context evaluated (see the module docstring).
        self.pool: SlotPool[Any] = SlotPool(self._new_context() for _ in range(slots))
        first = self._first_context()
        self.formatter = self._make_formatter(first)
        self.native_tools = tools.template_knows_tools(self.formatter.template)
        self.recommended = Sampling.from_gguf(first.metadata, source=model_id or model_path)
        self.eos_text = token_text(first, first.token_eos())
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(first.model)  # the window the model was trained for

    @classmethod
    def load(cls, model, *, threads: int, device: str = "auto", slots: int = 2, n_ctx: int = 4096):
        """Load an InstalledModel (task chat, format gguf)."""
        path = next(iter(model.files.values()))
        return cls(str(path), threads=threads, slots=slots, n_ctx=n_ctx, model_id=model.id)

    # -- setup ---------------------------------------------------------------------------------
    def _new_context(self):
        return open_llama(model_path=self.model_path, n_ctx=self.n_ctx, n_threads=self.threads,
                          n_threads_batch=self.threads, n_batch=512, verbose=False)

    @staticmethod
    def _make_formatter(llm):
        """The model's own chat template from the GGUF metadata (tokenizer.chat_template)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise EdgeError(f"{llm.model_path}: the GGUF has no tokenizer.chat_template; re-export it with a "
                            "chat template (edge-run export llm ...).")
        eos = llm.token_eos()
        return Jinja2ChatFormatter(template=template, eos_token=token_text(llm, eos),
                                   bos_token=token_text(llm, llm.token_bos()), stop_token_ids=[eos])

    def close(self) -> None:
        """Free every llama.cpp context and the model now."""
        self.pool.close(lambda llm: llm.close())

    def _first_context(self):
        """Slot 0's context, for what any context of this model answers alike (tokenizing, vocabulary)."""
        llm = self.pool.slots[0].state
        if llm is None:
            raise EdgeError(f"model {self.model_id!r} was unloaded")
        return llm

    def set_threads(self, n: int) -> None:
        """Threads for the next steps (the scheduler's count for what the CPU can give now); a slot takes
        it before its next decode. llama.cpp's threads spin at barriers, so a thread whose core another
        program holds stalls every other one: fewer threads are then faster."""
        self.threads_now = max(1, min(int(n), self.threads))

    def _apply_threads(self, llm) -> None:
        n = self.threads_now
        if llm.n_threads != n:
            self._llama_cpp.llama_set_n_threads(llm.ctx, n, n)
            llm.n_threads = llm.n_threads_batch = n

    # -- prompt ---------------------------------------------------------------------------------
    def tokenize_prompt(self, messages: list[dict], toolset: tools.ToolSet | None = None) -> tuple[list[int], Any]:
        """Render the chat template (with the tools: the template's own way, else edge.chat.tools' generic
        system prompt) and tokenize exactly as create_chat_completion does."""
        messages, specs = tools.prompt_messages(messages, toolset, native=self.native_tools)
        try:
            rendered = self.formatter(messages=messages, tools=specs)
        except Exception as e:  # the template's raise_exception(), jinja errors
            raise BadRequest(f"the model's chat template rejected these messages: {e}", param="messages") from None
        tokens = self._first_context().tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special,
                                                special=True)
        return tokens, rendered

    # -- the job --------------------------------------------------------------------------------
    def chat_steps(self, req: ChatRequest) -> StepGen[ChatResult]:
        """Answer ``req`` (checked by ChatRequest.check at the door): yields Step("prefill") per chunk and
        Step("token", data=text) per streamed piece."""
        tokens, rendered = self.tokenize_prompt(req.messages, req.toolset)
        result = yield from self._generate_steps(tokens, req, rendered.stopping_criteria)
        toolset = req.toolset
        if toolset is not None and toolset.active and result.finish_reason != "length":
            result.tool_calls = tools.parse_calls(result.text, toolset)
            if result.tool_calls:
                result.finish_reason = "tool_calls"
        return result

    def complete_steps(self, prompt: str, req: ChatRequest) -> StepGen[ChatResult]:
        """Raw text completion of ``prompt`` (no chat template), as /v1/completions needs; ``prompt`` and
        ``req`` are checked at the door."""
        tokens = self._first_context().tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        return (yield from self._generate_steps(tokens, req, None))

    def _generate_steps(self, tokens: list[int], req: ChatRequest, stopping) -> StepGen[ChatResult]:
        # 1. check the prompt fits (the one check only the engine can make: it needs the tokens)
        limit = check_context(len(tokens), self.n_ctx, req.max_tokens, model_ctx=self.n_ctx_train)
        grammar = self._grammar(req)
        sampling = req.sampling(self.recommended)
        completion = None
        with self.pool.take(tokens) as slot:
            llm = slot.state
            try:
                # 2. prefill what the slot's cache lacks in whole chunks, one per step; create_completion finds
                #    that prefix cached, evaluates the rest (2..PREFILL_CHUNK + 1 tokens) and starts decoding
                reuse = min(slot.reusable(tokens, keep=2), llm.n_tokens)
                llm.n_tokens = reuse  # eval() drops the stale tail of the KV cache
                slot.tokens = tokens[:reuse]
                n_chunks = max(0, len(tokens) - reuse - 2) // PREFILL_CHUNK
                for c in range(n_chunks):
                    start = reuse + c * PREFILL_CHUNK
                    self._apply_threads(llm)
                    llm.eval(tokens[start:start + PREFILL_CHUNK])
                    slot.tokens = tokens[:start + PREFILL_CHUNK]
                    yield Step("prefill", index=c + 1, total=n_chunks + 1)
                # 3. decode, one streamed piece per step
                counter = _TokenCounter(stopping, limit=limit)
                completion = llm.create_completion(
                    prompt=tokens, stream=True, max_tokens=limit, temperature=sampling.temperature,
                    top_p=sampling.top_p, top_k=sampling.top_k, min_p=sampling.min_p,
                    repeat_penalty=sampling.repeat_penalty, seed=req.seed,
                    stop=list(req.stop) + ([self.eos_text] if self.eos_text else []),
                    stopping_criteria=self._llama_cpp.StoppingCriteriaList([counter]), grammar=grammar)
                parts: list[str] = []
                finish = "stop"
                while True:
                    self._apply_threads(llm)  # the count may change between two tokens
                    chunk = next(completion, None)
                    if chunk is None:
                        break
                    slot.tokens = tokens  # the whole prompt is in the cache once the first piece is out
                    choice = chunk["choices"][0]
                    text = choice.get("text") or ""
                    if text:
                        parts.append(text)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                    yield Step("token", data=text, tokens=counter.take())
                # 4. result
                if counter.at_limit:  # stopped by the counter (the criterion's "stop" is a length finish)
                    finish = "length"
                return ChatResult(text="".join(parts), prompt_tokens=len(tokens),
                                  completion_tokens=counter.completion_tokens(finish, bool(req.stop)),
                                  finish_reason=finish, model=self.model_id, seed=req.seed)
            finally:
                if completion is not None:
                    completion.close()

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


def token_text(llm, token: int) -> str:
    """The vocabulary text of ``token`` ("" for -1, llama.cpp's "no such token"), as llama-cpp-python's own
    chat-format setup reads it, through the public low-level API (``Llama.model`` and llama_vocab_get_text)."""
    if token == -1:
        return ""
    import llama_cpp

    return llama_cpp.llama_vocab_get_text(llama_cpp.llama_model_get_vocab(llm.model), token).decode("utf-8")


class _TokenCounter:
    """A stopping criterion that counts sampled tokens (and delegates), and stops at ``limit`` answer tokens.

    llama-cpp-python checks max_tokens only after a token's text is complete: while the text ends in an
    unfinished UTF-8 sequence it skips that check, so a model repeating such a byte token (e.g. with
    repeat_penalty < 1) would decode until the context is full and llama_decode fails. The criterion runs
    for every sampled token, so the limit holds whatever the text is."""

    def __init__(self, inner=None, limit: int | None = None):
        self.inner = inner
        self.limit = limit
        self.total = 0
        self._since = 0

    @property
    def at_limit(self) -> bool:
        """The answer reached ``limit`` tokens (the criterion's extra call after the loop counts one more)."""
        return self.limit is not None and self.total > self.limit

    def __call__(self, input_ids, logits) -> bool:
        self.total += 1
        self._since += 1
        if self.at_limit:
            return True
        return bool(self.inner(input_ids, logits)) if self.inner is not None else False

    def completion_tokens(self, finish: str, user_stops: bool) -> int:
        """Tokens in the answer, counted as llama-cpp-python's usage does.

        The criterion runs once per sampled token plus once after the loop; an end-of-generation
        token is sampled but not part of the answer (a stop string's last token is, so with user
        stop strings a "stop" finish is counted as a stop-string finish)."""
        if self.at_limit:
            return self.limit
        sampled = max(0, self.total - 1)
        return sampled - 1 if finish == "stop" and not user_stops and sampled else sampled

    def take(self) -> int:
        n, self._since = self._since, 0
        return n
