"""The second backend: llama.cpp through `llama-cpp-python`'s C API (the optional `.[llama]`
extra), for the models ctransformers' 2023 llama.cpp cannot load (Gemma 3, Qwen 3, Llama 3.2 ...).

One llama.cpp context holds every slot as a sequence (`n_seq_max` = slots), so a scheduler
step evaluates one token of every decoding sequence, and the pending prompt chunks, in a single
`llama_decode`: continuous batching. The step itself (the batch, `llama_decode`, the format's
mask, sampling with each sequence's parameters) runs in the Rust core (`_core.LlamaSteps`), which
calls the functions of the `libllama` llama-cpp-python loaded, with the GIL released: Python
sees one call per step, not several per token. Loading the model and saving and restoring
sequence states stay here, through ctypes."""

from __future__ import annotations

import ctypes
import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

from threadloom._core import LLAMA_BATCH_LAYOUT, Constraint, LlamaSteps
from threadloom.backends.base import (
    Constraints,
    SamplingParams,
    StateData,
    backend_options,
    physical_cores,
)
from threadloom.errors import BackendError, ModelFormatError

log = logging.getLogger("threadloom.backends.llama_cpp")

# Most tokens one `llama_decode` call takes: prompt chunks plus one token per sequence.
DEFAULT_BATCH = 512
# The llama-cpp-python releases whose libllama the core calls directly (`.[llama]` pins one):
# `LlamaSteps` declares `llama_batch` and the functions' signatures as these releases have them.
SUPPORTED_VERSIONS = ("0.3.36",)


def load_library() -> Any:
    """The `llama_cpp` module, or a clear error naming the extra to install."""
    try:
        return importlib.import_module("llama_cpp")
    except ImportError as e:
        raise BackendError(
            "the llama-cpp backend needs llama-cpp-python: pip install 'threadloom[llama]'"
        ) from e


def check_library(lib: Any) -> None:
    """Refuses a llama-cpp-python whose C API the core was not written against: another
    version, or a `llama_batch` laid out otherwise than the core's."""
    version = getattr(lib, "__version__", "unknown")
    if version not in SUPPORTED_VERSIONS:
        raise BackendError(
            f"llama-cpp-python {version} is not supported (the core calls libllama directly and "
            f"knows {', '.join(SUPPORTED_VERSIONS)}): pip install 'threadloom[llama]'"
        )
    declared = lib.llama_batch
    theirs = [("size", ctypes.sizeof(declared))]
    theirs += [(name, getattr(declared, name).offset) for name, _ in declared._fields_]
    if theirs != list(LLAMA_BATCH_LAYOUT):
        raise BackendError(f"libllama's llama_batch layout {theirs} is not the core's")


def _address(function: Any) -> int:
    value = ctypes.cast(function, ctypes.c_void_p).value
    if not value:
        raise BackendError(f"libllama has no {function!r}")
    return int(value)


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
        check_library(lib)
        self.threads = threads or physical_cores()
        lib.llama_backend_init()
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = gpu_layers
        self._model = lib.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self._model:
            raise ModelFormatError(f"llama.cpp could not load {model_path}")
        trained = int(lib.llama_model_n_ctx_train(self._model))
        self._context_length = min(context_length or trained, trained)
        vocab = lib.llama_model_get_vocab(self._model)
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
        self._steps = LlamaSteps(
            (
                int(self._ctx),
                int(self._mem),
                _address(lib.llama_decode),
                _address(lib.llama_get_logits_ith),
                _address(lib.llama_memory_seq_rm),
            ),
            n_vocab=int(lib.llama_vocab_n_tokens(vocab)),
            sequences=sequences,
            context_length=self._context_length,
            batch_size=batch_size,
            # Sequences evaluated per llama_decode call; None: all of them (the point of this
            # backend). 1 evaluates them one after another, for benchmarks.
            group=decode_group,
        )
        self._sequences = sequences
        # Sequences whose cache copy (`share_prefix`) waits for the next llama_decode.
        self._copying: set[int] = set()

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def sequences(self) -> int:
        return self._sequences

    def held(self, seq: int) -> Sequence[int]:
        return self._steps.held(seq)

    def prefill(self, seq: int, keep: int, ids: Sequence[int]) -> None:
        self._open()
        # Queued: the step's `decode` evaluates it in the same batch as the other sequences'
        # next tokens and the other waiting prompts.
        self._steps.prefill(seq, keep, ids)

    def decode(
        self, batch: Sequence[tuple[int, SamplingParams]], constraints: Constraints = ()
    ) -> list[int | None]:
        self._open()
        wants = [
            (seq, p.temperature, p.top_k, p.top_p, p.repetition_penalty, p.seed) for seq, p in batch
        ]
        self._copying.clear()  # this step's llama_decode makes the pending copies
        if not constraints:
            return self._steps.step(wants)
        # The core reads the matchers themselves: only its own `Constraint`s will do (what
        # `OutputFormats` compiles), never another `TokenConstraint`.
        return self._steps.step(wants, cast("Sequence[Constraint | None]", constraints))

    def save_state(self, seq: int) -> tuple[Sequence[int], bytes] | None:
        lib = self._lib
        if seq in self._copying:
            return None  # its copy lands with the next step
        ids = self._steps.evaluated(seq)
        if not ids:
            return None
        size = int(lib.llama_state_seq_get_size(self._ctx, seq))
        buf = (ctypes.c_uint8 * size)()
        written = int(lib.llama_state_seq_get_data(self._ctx, buf, size, seq))
        if written == 0:
            return None
        return ids, bytes(memoryview(buf)[:written])

    def load_state(self, seq: int, data: StateData, ids: Sequence[int]) -> bool:
        lib = self._lib
        self._steps.clear(seq)
        array = ctypes.c_uint8 * len(data)
        writable = isinstance(data, memoryview) and not data.readonly
        src = array.from_buffer(data) if writable else array.from_buffer_copy(data)
        read = int(lib.llama_state_seq_set_data(self._ctx, src, len(data), seq))
        # The state must cover exactly `ids`: positions 0 .. len(ids) - 1.
        if read != len(data) or lib.llama_memory_seq_pos_max(self._mem, seq) != len(ids) - 1:
            self._steps.clear(seq)
            return False
        self._steps.restore(seq, ids)
        return True

    def share_prefix(self, src: int, dst: int, n: int) -> int:
        """llama.cpp copies `src`'s cache stream into `dst`'s at the next `llama_decode`
        (each sequence has its own stream: the whole stream is copied, then cut to `n`), so
        `dst`'s state cannot be saved before that step ran."""
        lib = self._lib
        ids = self._steps.evaluated(src)[:n]
        if not ids:
            return 0
        self._steps.clear(dst)
        lib.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
        lib.llama_memory_seq_rm(self._mem, dst, len(ids), -1)
        self._steps.restore(dst, ids)
        self._copying.add(dst)
        return len(ids)

    def _open(self) -> None:
        # The core holds the context's address: after `close` it would be a dangling one.
        if not self._ctx:
            raise BackendError("the llama.cpp backend is closed")

    def close(self) -> None:
        if self._ctx:
            lib = self._lib
            ctx, model = self._ctx, self._model
            self._ctx = self._model = None
            lib.llama_free(ctx)
            lib.llama_model_free(model)


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
