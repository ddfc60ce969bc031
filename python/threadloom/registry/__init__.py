"""Several models on one server: declared in a TOML file (`spec`), loaded when a request
names one and unloaded when idle (`pool`). `Engine` keeps exactly one model."""

from threadloom.registry.pool import Lease, LoadedModel, Models, OpenEngine
from threadloom.registry.spec import ModelSpec, load_models_file, parse_models

__all__ = [
    "Lease",
    "LoadedModel",
    "ModelSpec",
    "Models",
    "OpenEngine",
    "load_models_file",
    "parse_models",
]
