"""The second backend: llama.cpp through `llama-cpp-python`'s C API (the optional `.[llama]`
extra), for the models ctransformers' 2023 llama.cpp cannot load (Gemma 3, Qwen 3, Llama 3.2 ...).

One llama.cpp context holds every slot as a sequence (`n_seq_max` = slots), so a scheduler
step evaluates one token of every decoding sequence, and the pending prompt chunk, in a single
`llama_decode`: continuous batching. Sampling runs on the logits in numpy (a dependency of
llama-cpp-python), per sequence with its own parameters; llama.cpp's sampler chain copies the
whole vocabulary (262k entries for Gemma 3) into a candidate array on every token."""

from __future__ import annotations

import ctypes
import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from threadloom.backends.base import (
    Constraints,
    SamplingParams,
    StateData,
    backend_options,
    physical_cores,
)
from threadloom.errors import BackendError, ModelFormatError

log = logging.getLogger("threadloom.backends.llama_cpp")

# Tokens the repetition penalty looks back over (prompt and reply), as ctransformers does.
PENALTY_WINDOW = 64
# Most tokens one `llama_decode` call takes: a prompt chunk plus one token per sequence.
DEFAULT_BATCH = 512


def load_library() -> Any:
    """The `llama_cpp` module, or a clear error naming the extra to install."""
    try:
        return importlib.import_module("llama_cpp")
    except ImportError as e:
        raise BackendError(
            "the llama-cpp backend needs llama-cpp-python: pip install 'threadloom[llama]'"
        ) from e


@dataclass
class _Seq:
    """One slot's sequence. `ids` are the tokens it holds: the first `evaluated` are in the
    KV cache, the rest wait for the next batch. `sampled` is the token the last step picked,
    not yet evaluated (and not in `ids`)."""

    ids: list[int] = field(default_factory=list)
    evaluated: int = 0
    sampled: int | None = None
    rng: np.random.Generator | None = None


def pick_token(
    logits: npt.NDArray[np.float32],
    recent: Sequence[int],
    params: SamplingParams,
    rng: np.random.Generator | None,
) -> int:
    """The next token from one row of logits (which it may change): ctransformers' order
    (repetition penalty over the recent tokens, then top-k, top-p and temperature), greedy at
    temperature 0."""
    if params.repetition_penalty != 1.0 and recent:
        # In place: the row is llama.cpp's output buffer, which only this step reads and
        # the next llama_decode overwrites (copying 262k floats per token is not free).
        seen = np.unique(np.asarray(recent, dtype=np.int64))
        values = logits[seen]
        penalty = params.repetition_penalty
        logits[seen] = np.where(values > 0, values / penalty, values * penalty)
    if params.temperature <= 0.0 or rng is None:
        return int(np.argmax(logits))
    k = params.top_k if 0 < params.top_k < logits.shape[0] else logits.shape[0]
    top = np.argpartition(logits, -k)[-k:] if k < logits.shape[0] else np.arange(k)
    top = top[np.argsort(logits[top])[::-1]]
    scaled = logits[top].astype(np.float64) / params.temperature
    probs = np.exp(scaled - scaled[0])
    probs /= probs.sum()
    if params.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), params.top_p)) + 1
        top, probs = top[:keep], probs[:keep] / probs[:keep].sum()
    return int(top[rng.choice(len(top), p=probs)])


class LlamaCppBackend:
    """`sequences` conversations in one llama.cpp context, driven by the scheduler's thread."""

    def __init__(
        self,
        model_path: Path,
        *,
        sequences: int,
        context_length: int | None,
        gpu_layers: int = 0,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH,
        decode_group: int | None = None,
        kv_type: str = "f16",
    ) -> None:
        self._lib = lib = load_library()
        self.threads = threads or physical_cores()
        # Sequences evaluated per llama_decode call; None: all of them (the point of this
        # backend). 1 evaluates them one after another, for benchmarks.
        self._group = decode_group
        lib.llama_backend_init()
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = gpu_layers
        self._model = lib.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self._model:
            raise ModelFormatError(f"llama.cpp could not load {model_path}")
        trained = int(lib.llama_model_n_ctx_train(self._model))
        self._context_length = min(context_length or trained, trained)
        vocab = lib.llama_model_get_vocab(self._model)
        self._n_vocab = int(lib.llama_vocab_n_tokens(vocab))
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = self._context_length * sequences
        cparams.n_batch = cparams.n_ubatch = batch_size
        cparams.n_seq_max = sequences
        cparams.n_threads = cparams.n_threads_batch = self.threads
        # Each sequence gets its own part of the cache (they rarely share a prefix), and a
        # full-size sliding-window cache, so a sequence can be cut back to any prefix.
        cparams.kv_unified = False
        cparams.swa_full = True
        cparams.type_k = cparams.type_v = _kv_type(lib, kv_type)
        cparams.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lib.llama_model_free(self._model)
            raise BackendError(f"llama.cpp could not create a context for {model_path}")
        self._mem = lib.llama_get_memory(self._ctx)
        self._batch_size = batch_size
        self._batch = lib.llama_batch_init(batch_size, 0, 1)
        self._seqs = [_Seq() for _ in range(sequences)]

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def sequences(self) -> int:
        return len(self._seqs)

    def held(self, seq: int) -> Sequence[int]:
        return self._seqs[seq].ids

    def prefill(self, seq: int, keep: int, ids: Sequence[int]) -> None:
        s = self._seqs[seq]
        s.sampled = None
        s.rng = None
        if keep < s.evaluated:
            # Cutting a sequence back does not fail with a full-size cache; if it ever does,
            # forget it all and evaluate the kept prefix again.
            if self._lib.llama_memory_seq_rm(self._mem, seq, keep, -1):
                s.evaluated = keep
            else:
                self._lib.llama_memory_seq_rm(self._mem, seq, -1, -1)
                s.evaluated = 0
        del s.ids[keep:]
        if s.evaluated < len(s.ids):
            # An earlier chunk no decode step took (nobody was decoding): evaluate it now.
            self._flush([seq], want=())
        # This chunk waits for the step's `decode`, which evaluates it in the same batch as
        # the other sequences' next tokens.
        s.ids.extend(ids)

    def decode(
        self, batch: Sequence[tuple[int, SamplingParams]], constraints: Constraints = ()
    ) -> list[int | None]:
        out: list[int | None] = [None] * len(batch)
        live: list[tuple[int, int, SamplingParams]] = []
        for n, (seq, params) in enumerate(batch):
            s = self._seqs[seq]
            if s.sampled is not None:
                if len(s.ids) >= self._context_length:
                    continue
                s.ids.append(s.sampled)
                s.sampled = None
            elif s.evaluated == len(s.ids):
                # Nothing new to evaluate (the scheduler never asks this): evaluate the last
                # token again for its logits.
                self._lib.llama_memory_seq_rm(self._mem, seq, s.evaluated - 1, -1)
                s.evaluated -= 1
            live.append((n, seq, params))
        decoding = {seq for _, seq, _ in live}
        # Prompt chunks of sequences not decoding yet ride along in the first call.
        riders = [
            i for i, s in enumerate(self._seqs) if s.evaluated < len(s.ids) and i not in decoding
        ]
        group = self._group or max(1, len(live))
        for start in range(0, len(live), group):
            chosen = live[start : start + group]
            seqs = [seq for _, seq, _ in chosen]
            rows = self._flush([*seqs, *(riders if start == 0 else ())], want=seqs)
            for n, seq, params in chosen:
                s = self._seqs[seq]
                if s.rng is None and params.temperature > 0.0:
                    s.rng = np.random.default_rng(None if params.seed < 0 else params.seed)
                logits = self._logits(rows[seq])
                mask = constraints[n] if constraints else None
                if mask is not None:
                    mask.apply(logits.ctypes.data, logits.shape[0])
                s.sampled = pick_token(logits, s.ids[-PENALTY_WINDOW:], params, s.rng)
                out[n] = s.sampled
        return out

    def _flush(self, seqs: Sequence[int], want: Sequence[int]) -> dict[int, int]:
        """Evaluates the waiting tokens of `seqs`, in as few `llama_decode` calls as the batch
        size allows, asking logits for the last token of each sequence in `want`. Returns the
        batch row of those logits (all in the last call)."""
        lib, b = self._lib, self._batch
        entries: list[tuple[int, int, int, bool]] = []
        for seq in seqs:
            s = self._seqs[seq]
            last = len(s.ids) - 1
            for pos in range(s.evaluated, len(s.ids)):
                entries.append((seq, s.ids[pos], pos, pos == last and seq in want))
        # Logits rows must all be in the final call: put the wanted tokens last.
        entries.sort(key=lambda e: e[3])
        rows: dict[int, int] = {}
        for start in range(0, len(entries), self._batch_size):
            part = entries[start : start + self._batch_size]
            for i, (seq, token, pos, logits) in enumerate(part):
                b.token[i] = token
                b.pos[i] = pos
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq
                b.logits[i] = logits
                if logits:
                    rows[seq] = i
            b.n_tokens = len(part)
            code = lib.llama_decode(self._ctx, b)
            if code != 0:
                self._forget([e[0] for e in part])
                raise BackendError(f"llama_decode failed with code {code}")
            for seq, _, pos, _ in part:
                s = self._seqs[seq]
                s.evaluated = max(s.evaluated, pos + 1)
        return rows

    def _logits(self, row: int) -> npt.NDArray[np.float32]:
        ptr = self._lib.llama_get_logits_ith(self._ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))

    def _forget(self, seqs: Sequence[int]) -> None:
        """A failed decode leaves the sequences' caches unknown: start them empty."""
        for seq in set(seqs):
            self._lib.llama_memory_seq_rm(self._mem, seq, -1, -1)
            self._seqs[seq] = _Seq()

    def save_state(self, seq: int) -> tuple[Sequence[int], bytes] | None:
        s, lib = self._seqs[seq], self._lib
        if s.evaluated == 0:
            return None
        size = int(lib.llama_state_seq_get_size(self._ctx, seq))
        buf = (ctypes.c_uint8 * size)()
        written = int(lib.llama_state_seq_get_data(self._ctx, buf, size, seq))
        if written == 0:
            return None
        return s.ids[: s.evaluated], bytes(memoryview(buf)[:written])

    def load_state(self, seq: int, data: StateData, ids: Sequence[int]) -> bool:
        lib = self._lib
        lib.llama_memory_seq_rm(self._mem, seq, -1, -1)
        self._seqs[seq] = _Seq()
        array = ctypes.c_uint8 * len(data)
        writable = isinstance(data, memoryview) and not data.readonly
        src = array.from_buffer(data) if writable else array.from_buffer_copy(data)
        read = int(lib.llama_state_seq_set_data(self._ctx, src, len(data), seq))
        # The state must cover exactly `ids`: positions 0 .. len(ids) - 1.
        if read != len(data) or lib.llama_memory_seq_pos_max(self._mem, seq) != len(ids) - 1:
            lib.llama_memory_seq_rm(self._mem, seq, -1, -1)
            return False
        self._seqs[seq] = _Seq(ids=list(ids), evaluated=len(ids))
        return True

    def close(self) -> None:
        if self._ctx:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._lib.llama_model_free(self._model)
            self._ctx = self._model = None
        self._seqs = []


def _kv_type(lib: Any, name: str) -> int:
    types = {"f16": lib.GGML_TYPE_F16, "q8_0": lib.GGML_TYPE_Q8_0}
    if name not in types:
        raise BackendError(f"KV cache type must be one of {', '.join(types)}")
    return int(types[name])


@dataclass(frozen=True)
class LlamaCppFactory:
    """Loads a `LlamaCppBackend` of one GGUF file (the original: llama.cpp reads it as is)."""

    name: ClassVar[str] = "llama-cpp"
    model_path: Path
    context_length: int | None
    gpu_layers: int = 0
    threads: int | None = None
    decode_group: int | None = None
    kv_type: str = "f16"

    def __post_init__(self) -> None:
        _kv_type(load_library(), self.kv_type)  # a bad name fails at start, not at first load

    def __call__(self, sequences: int) -> LlamaCppBackend:
        return LlamaCppBackend(sequences=sequences, **backend_options(self))
