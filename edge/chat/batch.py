"""Batched decoding: the running chats of one GGUF model decode together, as llama-server does.

One llama.cpp context serves every slot of a model: ``n_seq_max`` = slots, one KV *stream* per slot
(``kv_unified`` off), each a full ``n_ctx`` window. A :class:`Sequence` is one running job on one slot:
the prompt tokens it still has to evaluate, its own sampler chain (penalties, grammar, top-k/p, min-p,
temperature, seed: the chain llama-cpp-python's ``Llama`` builds), and the tokens it sampled that its
job has not taken yet.

:meth:`BatchDecoder.step` runs ONE ``llama_decode`` for all of them: the token each decoding sequence
sampled last, then prompt pieces of the sequences still prefilling (oldest first, at most
``PREFILL_CHUNK + 1`` prompt tokens a step, so a step stays short), and each sequence whose last prompt
token or decoded token was in the batch samples its next token. A job's step calls ``step()`` only when
it has no sampled token waiting, so N chats cost one decode per N token steps, not N decodes.

Determinism: llama.cpp computes every row of a batch by itself (each matmul output element is one dot
product; flash attention, with a q8_0 cache, runs per query row over the row's own stream, whose cells
stay in position order because streams are not shared), so a sequence's logits are bit-identical whatever else is in its
batch: alone, beside other chats' tokens, or beside another prompt's chunk (tests/chat/test_batch.py
checks all three). Concurrent greedy answers therefore equal solo ones.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field
from typing import Any

from edge.chat.sampling import Sampling
from edge.chat.slots import PREFILL_CHUNK
from edge.errors import EdgeError
from edge.memory import trim_heap

FLASH_ATTENTION = True
"""llama.cpp's flash attention: on, as llama-server's auto turns it on for CPUs, with the KV cache in q8_0
(:data:`KV_TYPE`). Measured (2 threads, AVX2, SmolLM2 Q4_1, 128-token greedy answers, one process, 2026-12-07):
alone 94.2 -> 109.4 tok/s, 4 chats 114.3 -> 152.7, 8 chats 153.7 -> 170.0 against no flash attention with an f16
cache, and as fast as flash attention with an f16 cache (111.1 / 151.0 / 163.8), in half its KV memory. The
greedy answers part from the no-flash-attention ones after ~10 tokens (a 135M model's near-ties), as the f16
flash-attention ones do. With an f16 cache llama.cpp takes a tiled kernel for prompt pieces of many rows and
a KV-split kernel for a lone query over 512+ cells, so a prompt's logits depended on how it was split (600 tokens
as 37 + 563: up to 0.5 apart) and a reused prefix would change answers; with a q8_0 cache every row takes the
one per-row kernel, and the logits are bit-identical however the prompt is split (tests/chat/test_chat.py)."""

KV_TYPE = 8  # GGML_TYPE_Q8_0: 34 bytes a block of 32 values, against f16's 64
F16 = 1  # GGML_TYPE_F16
Q8_BLOCK = 32


@dataclass(frozen=True)
class Attention:
    """A model's attention settings: flash attention with a q8_0 cache where its K and V head sizes are whole
    q8_0 blocks (every common model: 64, 128 ...); else the f16 cache without flash attention, the other
    combination whose logits do not depend on how a prompt is split (a head of 16, as the tiny distilled
    students have, cannot be stored in q8_0: llama.cpp refuses the context)."""

    flash: bool
    kv_type: int

    @classmethod
    def for_heads(cls, k_dim: int, v_dim: int) -> "Attention":
        if FLASH_ATTENTION and k_dim % Q8_BLOCK == 0 and v_dim % Q8_BLOCK == 0:
            return cls(True, KV_TYPE)
        return cls(False, F16)

    @property
    def bytes_per_value(self) -> float:
        return 34 / 32 if self.kv_type == KV_TYPE else 2.0

    def llama_kwargs(self) -> dict[str, Any]:
        """As ``llama_cpp.Llama`` keyword arguments."""
        return {"flash_attn": self.flash, "type_k": self.kv_type, "type_v": self.kv_type}


@dataclass(frozen=True)
class KvShape:
    """What a GGUF's KV cache holds per token, from its metadata."""

    layers: int
    kv_heads: int
    k_dim: int
    v_dim: int

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "KvShape":
        arch = meta.get("general.architecture", "")

        def key(name: str) -> int:
            return int(meta[f"{arch}.{name}"])

        heads = key("attention.head_count")
        k_dim = int(meta.get(f"{arch}.attention.key_length", key("embedding_length") // heads))
        return cls(layers=key("block_count"), kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", heads)),
                   k_dim=k_dim, v_dim=int(meta.get(f"{arch}.attention.value_length", k_dim)))

    @property
    def attention(self) -> Attention:
        return Attention.for_heads(self.k_dim, self.v_dim)

    def cache_bytes(self, tokens: int) -> int:
        """Bytes of this cache holding ``tokens`` tokens: K and V, every layer, every KV head."""
        return int(self.layers * self.kv_heads * (self.k_dim + self.v_dim) * self.attention.bytes_per_value * tokens)


def llama_kwargs(gguf_path: str) -> dict[str, Any]:
    """The engine's attention settings for the GGUF at ``gguf_path`` as ``llama_cpp.Llama`` keyword arguments,
    for raw llama-cpp-python references (tests, bench) to compute the same graph."""
    return KvShape.from_metadata(gguf_metadata(gguf_path)).attention.llama_kwargs()


PENALTY_LAST_N = 64
"""Tokens the repeat penalty looks back over (llama-cpp-python's ``last_n_tokens_size``)."""


def prompt_piece(pending: int) -> int:
    """How many of ``pending`` prompt tokens the next piece evaluates: a whole chunk while more than a chunk
    and two tokens are left, else all of them, so the last piece always has at least two tokens."""
    return PREFILL_CHUNK if pending > PREFILL_CHUNK + 1 else pending


@dataclass
class Sequence:
    """One running job's decoding state on slot ``seq_id`` (its KV stream)."""

    seq_id: int
    pending: list[int]  # prompt tokens not yet evaluated
    n_past: int  # tokens in this sequence's KV stream
    sampler: Any  # llama_cpp._internals.LlamaSampler, this job's chain
    limit: int  # answer tokens at most
    stop_ids: frozenset[int]  # tokens that end the answer (end-of-generation)
    out: list[int] = field(default_factory=list)  # sampled, not yet taken by the job
    feed: int | None = None  # the last sampled token, evaluated at the next step
    sampled: int = 0
    pieces_done: int = 0  # prompt pieces evaluated (the job's prefill steps)
    logits_row: int = -1  # this sequence's row in the last decode's logits (-1: none)
    finished: bool = False  # nothing more to decode (end token, limit, stop string or the job ended)

    @property
    def prefilling(self) -> bool:
        return bool(self.pending)


class BatchDecoder:
    """The one llama.cpp context of a GGUF model and the sequences decoding in it (thread-safe: the
    scheduler's two lanes may both step chats of one model)."""

    def __init__(self, model, *, n_ctx: int, slots: int, threads: int, attention: Attention):
        import llama_cpp
        import llama_cpp._internals as internals

        self._C = llama_cpp
        self._internals = internals
        self.model = model
        self.slots = slots
        self.capacity = PREFILL_CHUNK + 1 + slots  # one prompt piece and every slot's next token
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * slots  # one n_ctx stream per slot
        params.n_seq_max = slots
        params.kv_unified = False  # a stream per sequence: its cells stay in position order (determinism)
        params.n_batch = params.n_ubatch = self.capacity
        params.n_threads = params.n_threads_batch = threads
        self.attention = attention
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.attention.flash
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        params.type_k = params.type_v = self.attention.kv_type
        self.ctx = internals.LlamaContext(model=model, params=params, verbose=False)
        self._memory = llama_cpp.llama_get_memory(self.ctx.ctx)
        self._batch = llama_cpp.llama_batch_init(self.capacity, 0, 1)
        self._threads = threads
        self._lock = threading.Lock()
        self._running: list[Sequence] = []
        self.decodes = 0  # llama_decode calls (tests: N chats share them)

    # -- sequences ------------------------------------------------------------------------------
    def begin(self, seq_id: int, tokens: list[int], keep: int, *, sampling: Sampling, seed: int, grammar,
              limit: int) -> Sequence:
        """Start a job on slot ``seq_id`` whose stream holds a reusable prefix of ``keep`` tokens of ``tokens``."""
        with self._lock:
            self._C.llama_memory_seq_rm(self._memory, seq_id, keep, -1)  # drop the stale tail of the stream
            seq = Sequence(seq_id, list(tokens[keep:]), keep, self._sampler(sampling, seed, grammar), limit,
                           self._stop_ids())
            self._running.append(seq)
            return seq

    def end(self, seq: Sequence) -> None:
        """The job is over (done, failed or cancelled): stop decoding for it and free its sampler."""
        with self._lock:
            seq.finished = True
            if seq in self._running:
                self._running.remove(seq)
            if seq.sampler is not None:
                seq.sampler.close()
                seq.sampler = None

    def _stop_ids(self) -> frozenset[int]:
        vocab = self.model.vocab
        return frozenset(t for t in (self.model.token_eos(), self._C.llama_vocab_eot(vocab)) if t >= 0)

    def _sampler(self, s: Sampling, seed: int, grammar):
        """The chain llama-cpp-python's Llama._init_sampler builds for these values (same seeded answers)."""
        chain = self._internals.LlamaSampler()
        chain.add_penalties(self.model.n_vocab(), PENALTY_LAST_N, s.repeat_penalty, 0.0, 0.0)
        if grammar is not None:
            chain.add_grammar(self.model, grammar)
        if s.temperature == 0.0:
            chain.add_greedy()
        else:
            chain.add_top_k(s.top_k)
            chain.add_typical(1.0, 1)
            chain.add_top_p(s.top_p, 1)
            chain.add_min_p(s.min_p, 1)
            chain.add_temp(s.temperature)
            chain.add_dist(seed)
        return chain

    def is_end(self, token: int) -> bool:
        """True for end-of-generation tokens (llama.cpp's is_eog: EOS, EOT, ...)."""
        return bool(self._C.llama_vocab_is_eog(self.model.vocab, token))

    # -- the batched step ----------------------------------------------------------------------------
    def step(self, threads: int) -> None:
        """One llama_decode for every running sequence (see the module docstring)."""
        C = self._C
        with self._lock:
            # 1. the batch: each decoding sequence's last token, then prompt pieces, oldest job first
            entries: list[tuple[Sequence, int, int, bool]] = []  # (sequence, token, position, wants logits)
            decoding = [seq for seq in self._running if seq.feed is not None and not seq.finished]
            entries.extend((seq, seq.feed, seq.n_past, True) for seq in decoding)
            budget = PREFILL_CHUNK + 1
            prefilled: list[Sequence] = []
            for seq in self._running:
                if not seq.prefilling or seq.finished:
                    continue
                n = prompt_piece(len(seq.pending))
                if n > budget:
                    break
                budget -= n
                last = n == len(seq.pending)
                entries.extend((seq, t, seq.n_past + i, last and i == n - 1) for i, t in enumerate(seq.pending[:n]))
                prefilled.append(seq)
            if not entries:
                return
            # 2. one decode over all of them
            b = self._batch
            b.n_tokens = len(entries)
            for i, (seq, token, pos, logits) in enumerate(entries):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
                b.seq_id[i][0] = seq.seq_id
            if threads != self._threads:
                C.llama_set_n_threads(self.ctx.ctx, threads, threads)
                self._threads = threads
            code = C.llama_decode(self.ctx.ctx, b)
            if code != 0:
                raise EdgeError(f"llama_decode failed with code {code} on a batch of {len(entries)} tokens "
                                f"({len(self._running)} chats running)")
            self.decodes += 1
            # 3. bookkeeping, then each sequence with fresh logits samples its next token
            for seq in decoding:
                seq.n_past += 1
                seq.feed = None
            for seq in prefilled:
                n = prompt_piece(len(seq.pending))
                del seq.pending[:n]
                seq.n_past += n
                seq.pieces_done += 1
            for seq in self._running:
                seq.logits_row = -1
            for i, (seq, _token, _pos, logits) in enumerate(entries):
                if logits:
                    seq.logits_row = i
                    self._sample(seq, i)

    def last_logits(self, seq: Sequence):
        """A copy of the logits ``seq`` sampled its last token from, if the last decode gave it any
        (numpy float32 array of the vocabulary size), else None."""
        import numpy as np

        with self._lock:
            if seq.logits_row < 0 or self._batch is None:
                return None
            ptr = self._C.llama_get_logits_ith(self.ctx.ctx, seq.logits_row)
            return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab(),)).copy()

    def _sample(self, seq: Sequence, index: int) -> None:
        token = seq.sampler.sample(self.ctx, index)  # llama_sampler_sample also accepts it into the chain
        seq.sampled += 1
        seq.out.append(token)
        if token in seq.stop_ids or self.is_end(token) or seq.sampled >= seq.limit:
            seq.finished = True
        else:
            seq.feed = token

    def close(self) -> None:
        """Free the batch and the context now (the model is the engine's)."""
        with self._lock:
            for seq in self._running:
                if seq.sampler is not None:
                    seq.sampler.close()
                    seq.sampler = None
            self._running.clear()
            if self._batch is not None:
                self._C.llama_batch_free(self._batch)
                self._batch = None
            self.ctx.close()

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)


def gguf_metadata(gguf_path: str) -> dict[str, str]:
    """The GGUF's metadata, by a vocabulary-only load (without the weights)."""
    import llama_cpp
    import llama_cpp._internals as internals
    from llama_cpp._logger import set_verbose

    set_verbose(False)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = internals.LlamaModel(path_model=gguf_path, params=params, verbose=False)
    try:
        return model.metadata()
    finally:
        model.close()
        trim_heap()  # the vocabulary's 16 MB (SmolLM2) stayed in malloc's free lists: 1.35x llama-server's RSS at N=1


def kv_cache_bytes(gguf_path: str, tokens: int) -> int:
    """Bytes of the KV cache the engine gives the GGUF at ``gguf_path`` holding ``tokens`` tokens."""
    return KvShape.from_metadata(gguf_metadata(gguf_path)).cache_bytes(tokens)


def detokenize_piece(model, token: int) -> bytes:
    """The bytes of one answer token (special tokens render as nothing), as llama-cpp-python detokenizes."""
    import llama_cpp

    buf = (ctypes.c_char * 64)()
    n = llama_cpp.llama_token_to_piece(model.vocab, llama_cpp.llama_token(token), buf, len(buf), 0, False)
    if n < 0:  # longer than the buffer: llama.cpp returns the size it needs
        buf = (ctypes.c_char * -n)()
        n = llama_cpp.llama_token_to_piece(model.vocab, llama_cpp.llama_token(token), buf, len(buf), 0, False)
    return bytes(buf[:n])
