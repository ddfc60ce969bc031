"""Generation backends: engines that evaluate token ids and sample the next token."""

from threadloom.backends.base import Backend, BackendFactory, SamplingParams

__all__ = ["Backend", "BackendFactory", "SamplingParams"]
