"""Type stubs for the Rust extension module `threadloom._core`."""

from collections.abc import Callable, Iterable, Mapping, Sequence
from os import PathLike
from typing import Any, Final, Literal, final

__all__ = [
    "MAX_METADATA_BYTES",
    "MAX_THREAD_MESSAGES",
    "Appended",
    "Assembly",
    "ChatTemplate",
    "PromptEngine",
    "Response",
    "ResponseInfo",
    "Retention",
    "Store",
    "Thread",
    "ThreadPage",
    "Tokenizer",
    "Turn",
    "convert_for_ctransformers",
    "new_response_id",
]

_Metadata = Mapping[str, Any] | str | bytes | None
_Role = Literal["system", "user", "assistant", "tool"]
_ThreadState = Literal["open", "locked", "archived"]
_ResponseStatus = Literal["completed", "incomplete", "failed"]
_Strategy = Literal["tokens", "window", "none"]

MAX_THREAD_MESSAGES: Final[int]
"""Messages one conversation (root to newest turn) may hold."""
MAX_METADATA_BYTES: Final[int]
"""Largest metadata object, in bytes of compact JSON."""

@final
class Retention:
    def __new__(
        cls,
        *,
        thread_inactivity_s: float = 7_776_000.0,
        thread_max_age_s: float = 31_536_000.0,
        response_ttl_s: float = 2_592_000.0,
        anchor_window_s: float = 86_400.0,
    ) -> Retention: ...
    @property
    def thread_inactivity_s(self) -> float: ...
    @property
    def thread_max_age_s(self) -> float: ...
    @property
    def response_ttl_s(self) -> float: ...
    @property
    def anchor_window_s(self) -> float: ...

@final
class ResponseInfo:
    def __new__(
        cls,
        model: str,
        *,
        status: _ResponseStatus = "completed",
        output_count: int = 1,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cached_tokens: int = 0,
        error: str | None = None,
        metadata: _Metadata = None,
        id: str | None = None,
    ) -> ResponseInfo: ...
    @property
    def id(self) -> str | None: ...
    @property
    def model(self) -> str: ...
    @property
    def status(self) -> _ResponseStatus: ...
    @property
    def output_count(self) -> int: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...
    @property
    def error(self) -> str | None: ...
    @property
    def metadata_json(self) -> str | None: ...

def new_response_id() -> str: ...

@final
class Thread:
    @property
    def id(self) -> str: ...
    @property
    def owner(self) -> str: ...
    @property
    def head(self) -> str | None: ...
    @property
    def metadata(self) -> dict[str, Any]: ...
    @property
    def metadata_json(self) -> str: ...
    @property
    def state(self) -> _ThreadState: ...
    @property
    def visible(self) -> bool: ...
    @property
    def created_ms(self) -> int: ...
    @property
    def last_activity_ms(self) -> int: ...
    @property
    def message_count(self) -> int: ...

@final
class Response:
    @property
    def id(self) -> str: ...
    @property
    def owner(self) -> str: ...
    @property
    def status(self) -> _ResponseStatus: ...
    @property
    def model(self) -> str: ...
    @property
    def last_turn(self) -> str: ...
    @property
    def parent_turn(self) -> str | None: ...
    @property
    def input_count(self) -> int: ...
    @property
    def output_count(self) -> int: ...
    @property
    def thread_id(self) -> str | None: ...
    @property
    def previous_response_id(self) -> str | None: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...
    @property
    def error(self) -> str | None: ...
    @property
    def created_ms(self) -> int: ...
    @property
    def metadata(self) -> dict[str, Any]: ...

@final
class Turn:
    @property
    def id(self) -> str: ...
    @property
    def parent_id(self) -> str | None: ...
    @property
    def role(self) -> _Role: ...
    @property
    def content(self) -> str: ...
    @property
    def reasoning(self) -> str | None: ...
    @property
    def tool(self) -> str | None: ...
    @property
    def depth(self) -> int: ...
    @property
    def created_ms(self) -> int: ...

@final
class Appended:
    @property
    def turn_ids(self) -> list[str]: ...
    @property
    def response(self) -> Response | None: ...
    @property
    def thread(self) -> Thread | None: ...

@final
class ThreadPage:
    @property
    def threads(self) -> list[Thread]: ...
    @property
    def next_cursor(self) -> str | None: ...

@final
class Store:
    def __new__(
        cls,
        path: str | PathLike[str],
        *,
        map_size: int | None = None,
        max_map_size: int | None = None,
        retention: Retention | None = None,
    ) -> Store: ...
    @property
    def path(self) -> str: ...
    @property
    def retention(self) -> Retention: ...
    @property
    def format_version(self) -> int: ...
    def create_thread(
        self,
        thread_id: str | None = None,
        *,
        owner: str = "default",
        metadata: _Metadata = None,
        visible: bool = True,
        exist_ok: bool = False,
    ) -> Thread: ...
    def get_thread(self, thread_id: str, *, owner: str = "default") -> Thread: ...
    def list_threads(
        self,
        *,
        owner: str = "default",
        visible: bool = True,
        limit: int = 20,
        after: str | None = None,
    ) -> ThreadPage: ...
    def update_thread(
        self,
        thread_id: str,
        *,
        owner: str = "default",
        metadata: _Metadata = None,
        state: str | None = None,
    ) -> Thread: ...
    def delete_thread(self, thread_id: str, *, owner: str = "default") -> None: ...
    def append(
        self,
        turns: Iterable[Mapping[str, str | None]],
        *,
        owner: str = "default",
        thread: str | None = None,
        after_response: str | None = None,
        after_turn: str | None = None,
        response: ResponseInfo | None = None,
        expected_head: str | None = None,
        anchor_window: bool = False,
    ) -> Appended: ...
    def rebase_thread(
        self,
        thread_id: str,
        turns: Iterable[Mapping[str, str | None]] | None = None,
        *,
        owner: str = "default",
        after_turn: str | None = None,
        expected_head: str | None = None,
    ) -> Thread: ...
    def history(
        self,
        *,
        owner: str = "default",
        thread: str | None = None,
        response: str | None = None,
        turn: str | None = None,
        limit: int | None = None,
    ) -> list[Turn]:
        """The conversation ending at a thread's head, a response or a turn, oldest first;
        with `limit`, only its newest `limit` turns."""
    def get_response(self, response_id: str, *, owner: str = "default") -> Response: ...
    def delete_response(self, response_id: str, *, owner: str = "default") -> None: ...
    def put_pending(self, response_id: str, payload: bytes, *, owner: str) -> None:
        """Records an announced response whose generation runs."""
    def remove_pending(self, response_id: str, *, owner: str) -> None: ...
    def get_pending(self, response_id: str, *, owner: str) -> bytes | None: ...
    def pending(self) -> list[tuple[str, str, bytes]]:
        """Every pending record as (owner, response id, payload)."""
    def sweep(self) -> dict[str, int]: ...
    def stats(self) -> dict[str, int]: ...
    def verify(self) -> None: ...

@final
class ChatTemplate:
    def __new__(cls, source: str, *, bos_token: str = "", eos_token: str = "") -> ChatTemplate: ...
    @staticmethod
    def builtin_source(name: str) -> str | None: ...
    @staticmethod
    def builtin_names() -> list[str]: ...
    @staticmethod
    def chatml(*, bos_token: str = "", eos_token: str = "<|im_end|>") -> ChatTemplate: ...
    def render(
        self,
        messages: Iterable[Mapping[str, str | None]],
        *,
        add_generation_prompt: bool = False,
        enable_thinking: bool | None = None,
        tools: str | None = None,
    ) -> str: ...

_Text = str | bytes | bytearray | memoryview

@final
class Tokenizer:
    @staticmethod
    def from_gguf(path: str | PathLike[str]) -> Tokenizer: ...
    def encode(
        self, text: _Text, *, add_special: bool = False, parse_special: bool = True
    ) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def count(
        self, text: _Text, *, add_special: bool = False, parse_special: bool = True
    ) -> int: ...
    def encode_batch(
        self, texts: Iterable[_Text], *, add_special: bool = False
    ) -> list[list[int]]: ...
    def count_batch(self, texts: Iterable[_Text], *, add_special: bool = False) -> list[int]: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def fingerprint(self) -> int: ...
    @property
    def bos_id(self) -> int | None: ...
    @property
    def eos_id(self) -> int | None: ...
    @property
    def eog_ids(self) -> list[int]: ...
    def piece(self, id: int) -> bytes | None: ...
    def id_to_token(self, id: int) -> str | None: ...

@final
class Assembly:
    @property
    def prompt(self) -> str: ...
    @property
    def ids(self) -> list[int]: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def context_length(self) -> int: ...
    @property
    def messages_total(self) -> int: ...
    @property
    def messages_kept(self) -> int: ...
    @property
    def messages_dropped(self) -> int: ...
    @property
    def shared_prefix_tokens(self) -> int: ...
    @property
    def cut_after(self) -> str | None: ...

@final
class PromptEngine:
    @staticmethod
    def from_gguf(
        path: str | PathLike[str],
        *,
        context_length: int | None = None,
        chat_template: str | None = None,
    ) -> PromptEngine: ...
    @property
    def context_length(self) -> int: ...
    @property
    def template_is_fallback(self) -> bool: ...
    @property
    def tokenizer(self) -> Tokenizer: ...
    def assemble(
        self,
        store: Store,
        inputs: Iterable[Mapping[str, str | None]],
        *,
        owner: str = "default",
        thread: str | None = None,
        response: str | None = None,
        turn: str | None = None,
        strategy: _Strategy = "tokens",
        window: int | None = None,
        budget: int | None = None,
        max_tokens: int = 256,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
        tools: str | None = None,
        cache_key: str | None = None,
    ) -> Assembly: ...
    def assemble_messages(
        self,
        messages: Iterable[Mapping[str, str | None]],
        *,
        owner: str = "default",
        strategy: _Strategy = "tokens",
        window: int | None = None,
        budget: int | None = None,
        max_tokens: int = 256,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
        tools: str | None = None,
        cache_key: str | None = None,
        protected: int = 1,
    ) -> Assembly: ...

def convert_for_ctransformers(
    src: str | PathLike[str],
    dst: str | PathLike[str],
    progress: Callable[[int, int], object] | None = None,
) -> dict[str, Any]: ...
