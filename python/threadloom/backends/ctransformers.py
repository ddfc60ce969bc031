"""The default backend: ctransformers 0.2.27 (its vendored 2023 llama.cpp) on CPU, or with CUDA
offload when `gpu_layers` > 0. It receives token ids from threadloom's own tokenizer, since its
tokenizer does not know special tokens."""

from __future__ import annotations

import ctypes
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from threadloom.backends.base import (
    Constraints,
    SamplingParams,
    StateData,
    TokenConstraint,
    backend_options,
    physical_cores,
)
from threadloom.errors import BackendError

# Never a token id: a prompt ending in it shares exactly the kept prefix with any state.
_NO_TOKEN = -1


def _cpu_library() -> str:
    """ctransformers ships avx2/avx/basic builds; pick the fastest this CPU runs."""
    try:
        import cpuinfo  # type: ignore[import-untyped]  # no stubs; comes with ctransformers

        flags = set(cpuinfo.get_cpu_info().get("flags", []))
    except Exception:
        return "basic"
    if "avx2" in flags:
        return "avx2"
    if "avx" in flags:
        return "avx"
    return "basic"


class CTransformersBackend:
    """`sequences` ctransformers instances of one model file, one per slot, driven by one
    thread. The weights are memory-mapped, so the instances share them and each costs only
    its context memory; every evaluation uses the whole thread budget, and since only the
    scheduler's thread calls in, the budget is never oversubscribed."""

    def __init__(
        self,
        model_path: Path,
        *,
        sequences: int,
        context_length: int,
        gpu_layers: int = 0,
        threads: int | None = None,
        batch_size: int = 64,
    ) -> None:
        from ctransformers import AutoModelForCausalLM  # type: ignore[import-untyped]

        self.threads = threads or physical_cores()
        self._batch_size = batch_size
        lib = None if gpu_layers > 0 else _cpu_library()
        try:
            self._llms: list[Any] = [
                AutoModelForCausalLM.from_pretrained(
                    str(model_path),
                    model_type="llama",
                    context_length=context_length,
                    gpu_layers=gpu_layers,
                    threads=self.threads,
                    batch_size=batch_size,
                    lib=lib,
                )
                for _ in range(sequences)
            ]
        except (OSError, RuntimeError, ValueError) as e:
            raise BackendError(f"ctransformers could not load {model_path}: {e}") from e
        self._context_length = context_length
        self._held: list[list[int]] = [[] for _ in range(sequences)]
        # The token each sequence sampled last and has not evaluated yet.
        self._pending: list[int | None] = [None] * sequences

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def sequences(self) -> int:
        return len(self._llms)

    def held(self, seq: int) -> Sequence[int]:
        return self._held[seq]

    def prefill(self, seq: int, keep: int, ids: Sequence[int]) -> None:
        # Cuts the instance's state back to exactly `keep` tokens, even where `ids` would match
        # what it held beyond them: the scheduler decides what may be reused (never another
        # tenant's prompt), and evaluating exactly `ids` keeps that decision.
        kept = self._held[seq][:keep]
        self._llms[seq].prepare_inputs_for_generation([*kept, _NO_TOKEN], reset=True)
        self._held[seq] = kept
        self._pending[seq] = None
        self._eval(seq, ids)

    def decode(
        self, batch: Sequence[tuple[int, SamplingParams]], constraints: Constraints = ()
    ) -> list[int | None]:
        masks = constraints or [None] * len(batch)
        return [
            self._step(seq, params, mask) for (seq, params), mask in zip(batch, masks, strict=True)
        ]

    def _step(self, seq: int, params: SamplingParams, mask: TokenConstraint | None) -> int | None:
        pending = self._pending[seq]
        if pending is not None:
            if len(self._held[seq]) >= self._context_length:
                return None
            self._eval(seq, [pending])
            self._pending[seq] = None
        if mask is not None:
            # ctransformers samples from its own logits buffer, which this pointer exposes:
            # masking it in place is what its `sample` then reads.
            llm = self._llms[seq]
            address = ctypes.cast(llm.ctransformers_llm_logits_data(), ctypes.c_void_p).value
            mask.apply(address or 0, int(llm.ctransformers_llm_logits_size()))
        greedy = params.temperature <= 0.0
        token = int(
            self._llms[seq].sample(
                top_k=1 if greedy else params.top_k,
                top_p=1.0 if greedy else params.top_p,
                temperature=1.0 if greedy else params.temperature,
                repetition_penalty=params.repetition_penalty,
                last_n_tokens=64,
                seed=params.seed,
            )
        )
        self._pending[seq] = token
        return token

    def _eval(self, seq: int, ids: Sequence[int]) -> None:
        try:
            self._llms[seq].eval(list(ids), batch_size=self._batch_size, threads=self.threads)
        except RuntimeError as e:
            self._held[seq] = []
            with warnings.catch_warnings():
                # Deprecated in favour of generate(reset=True); forgetting a state that failed
                # half way is exactly what it is for.
                warnings.simplefilter("ignore")
                self._llms[seq].reset()
            raise BackendError(f"evaluating tokens failed: {e}") from e
        self._held[seq].extend(ids)

    def save_state(self, seq: int) -> tuple[Sequence[int], bytes] | None:
        return None  # ctransformers has no state API

    def load_state(self, seq: int, data: StateData, ids: Sequence[int]) -> bool:
        return False

    def share_prefix(self, src: int, dst: int, n: int) -> int:
        return 0  # each sequence is its own model instance: nothing to copy between them

    def close(self) -> None:
        self._llms = []
        self._held = []


@dataclass(frozen=True)
class CTransformersFactory:
    """Loads a `CTransformersBackend` of one converted model file."""

    name: ClassVar[str] = "ctransformers"
    model_path: Path
    context_length: int
    gpu_layers: int = 0
    threads: int | None = None

    def __call__(self, sequences: int) -> CTransformersBackend:
        return CTransformersBackend(sequences=sequences, **backend_options(self))
