"""The default backend: ctransformers 0.2.27 (its vendored 2023 llama.cpp) on CPU, or with CUDA
offload when `gpu_layers` > 0. It receives token ids from threadloom's own tokenizer, since its
tokenizer does not know special tokens."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from threadloom.backends.base import SamplingParams
from threadloom.errors import ThreadloomError


class BackendError(ThreadloomError):
    """The generation engine failed."""


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
    """One ctransformers model instance. Its weights are memory-mapped, so several instances of
    one file share them and each extra slot costs only its context memory."""

    def __init__(
        self,
        model_path: Path,
        *,
        context_length: int,
        gpu_layers: int = 0,
        threads: int | None = None,
        batch_size: int = 64,
    ) -> None:
        from ctransformers import AutoModelForCausalLM  # type: ignore[import-untyped]

        self._threads = threads or max(1, os.cpu_count() or 1)
        self._batch_size = batch_size
        lib = None if gpu_layers > 0 else _cpu_library()
        try:
            self._llm: Any = AutoModelForCausalLM.from_pretrained(
                str(model_path),
                model_type="llama",
                context_length=context_length,
                gpu_layers=gpu_layers,
                threads=self._threads,
                batch_size=batch_size,
                lib=lib,
            )
        except (OSError, RuntimeError, ValueError) as e:
            raise BackendError(f"ctransformers could not load {model_path}: {e}") from e
        self._context_length = context_length
        self._evaluated: list[int] = []

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def evaluated(self) -> Sequence[int]:
        return self._evaluated

    def generate(
        self, ids: Sequence[int], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[int]:
        llm = self._llm
        # Drops the part of the held state that differs from `ids`; returns what is left to
        # evaluate (at least one token, so there are fresh logits to sample from).
        suffix = llm.prepare_inputs_for_generation(list(ids), reset=True)
        self._evaluated = list(ids[: len(ids) - len(suffix)])
        try:
            llm.eval(suffix, batch_size=self._batch_size, threads=self._threads)
        except RuntimeError as e:
            self._evaluated = []
            raise BackendError(f"evaluating the prompt failed: {e}") from e
        self._evaluated.extend(suffix)
        greedy = params.temperature <= 0.0
        for _ in range(params.max_tokens):
            if cancel.is_set():
                return
            token = int(
                llm.sample(
                    top_k=1 if greedy else params.top_k,
                    top_p=1.0 if greedy else params.top_p,
                    temperature=1.0 if greedy else params.temperature,
                    repetition_penalty=params.repetition_penalty,
                    last_n_tokens=64,
                    seed=params.seed,
                )
            )
            yield token
            if cancel.is_set():
                return
            # Evaluated only once the caller wants the next token, so a stop leaves the
            # instance holding exactly prompt + output (minus the unevaluated last token).
            llm.eval([token], batch_size=self._batch_size, threads=self._threads)
            self._evaluated.append(token)

    def reset(self) -> None:
        with warnings.catch_warnings():
            # Deprecated in favour of generate(reset=True), which keeps the common prefix;
            # forgetting everything is exactly what a reset is for here.
            warnings.simplefilter("ignore")
            self._llm.reset()
        self._evaluated = []

    def close(self) -> None:
        self._llm = None
        self._evaluated = []


class CTransformersFactory:
    """Loads `CTransformersBackend` instances of one converted model file."""

    name = "ctransformers"

    def __init__(
        self,
        model_path: Path,
        *,
        context_length: int,
        gpu_layers: int = 0,
        threads: int | None = None,
    ) -> None:
        self.model_path = model_path
        self.context_length = context_length
        self.gpu_layers = gpu_layers
        self.threads = threads

    def __call__(self) -> CTransformersBackend:
        return CTransformersBackend(
            self.model_path,
            context_length=self.context_length,
            gpu_layers=self.gpu_layers,
            threads=self.threads,
        )
