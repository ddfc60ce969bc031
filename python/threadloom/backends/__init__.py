"""Generation backends: engines that evaluate token ids and sample the next token."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from threadloom.backends.base import Backend, BackendFactory, SamplingParams
from threadloom.errors import InvalidInput

__all__ = ["BACKENDS", "Backend", "BackendFactory", "BackendName", "SamplingParams", "load_backend"]

BackendName = Literal["ctransformers", "llama-cpp"]
BACKENDS: tuple[BackendName, ...] = ("ctransformers", "llama-cpp")
# Tokens per slot unless asked otherwise (at most the model's own context).
DEFAULT_CONTEXT = 4096


def load_backend(
    name: str,
    model_path: Path,
    *,
    cache_dir: Path | None,
    context_length: int | None,
    gpu_layers: int,
    threads: int,
    decode_group: int | None,
    kv_cache_type: str,
    progress: bool,
) -> BackendFactory:
    """The factory of a backend named by `--backend`."""
    if name == "llama-cpp":
        from threadloom.backends.llama_cpp import LlamaCppFactory

        return LlamaCppFactory(
            model_path,
            context_length=context_length or DEFAULT_CONTEXT,
            gpu_layers=gpu_layers,
            threads=threads,
            decode_group=decode_group,
            kv_type=kv_cache_type,
        )
    if name != "ctransformers":
        raise InvalidInput(f"backend must be one of {', '.join(BACKENDS)}", param="backend")
    from threadloom.backends.ctransformers import CTransformersFactory
    from threadloom.convert import prepared_model

    converted = prepared_model(model_path, cache_dir, progress=progress)
    return CTransformersFactory(
        converted,
        context_length=context_length or DEFAULT_CONTEXT,
        gpu_layers=gpu_layers,
        threads=threads,
    )
