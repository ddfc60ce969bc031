"""Type stubs for the Rust extension module `threadloom._core`."""

from collections.abc import Callable, Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Final, Literal, final

from threadloom.errors import NotFound
from threadloom.store_counts import StoreStats, SweepCounts

__all__ = [
    "COMPACTION_KEY_BYTES",
    "LLAMA_BATCH_LAYOUT",
    "MAX_METADATA_BYTES",
    "MAX_THREAD_BRANCHES",
    "MAX_THREAD_MESSAGES",
    "MAX_TURN_BYTES",
    "RESPONSE_ID_PATTERN",
    "ROLES",
    "THREAD_ID_PATTERN",
    "Appended",
    "Assembly",
    "ChatTemplate",
    "Constraint",
    "Grammars",
    "LlamaSteps",
    "PromptEngine",
    "Response",
    "ResponseInfo",
    "Retention",
    "Store",
    "Thread",
    "ThreadPage",
    "Tokenizer",
    "Turn",
    "check_append_shape",
    "check_branch_room",
    "check_create",
    "check_history",
    "check_length",
    "check_metadata_change",
    "check_page_limit",
    "check_response_id_free",
    "check_state_change",
    "check_summary",
    "check_thread_write",
    "convert_for_ctransformers",
    "new_response_id",
    "new_thread_id",
    "new_turn_key",
    "normalize_metadata",
    "not_found",
    "open_compaction",
    "parse_anchor",
    "parse_thread_cursor",
    "parse_thread_state",
    "parse_turn_id",
    "parse_turns",
    "quote",
    "seal_compaction",
    "thread_cursor",
    "turn_id_string",
    "validate_owner",
    "validate_response_id",
    "validate_thread_id",
]

_Metadata = Mapping[str, Any] | str | bytes | None
_Role = Literal["system", "user", "assistant", "tool"]
_ThreadState = Literal["open", "locked", "archived"]
_ResponseStatus = Literal["completed", "incomplete", "failed"]
_Strategy = Literal["tokens", "window", "none"]
_AnchorKind = Literal["root", "thread", "response", "turn"]
_Messages = Iterable[Mapping[str, str | None]]

MAX_THREAD_MESSAGES: Final[int]
"""Messages one conversation (root to newest turn) may hold."""
MAX_METADATA_BYTES: Final[int]
"""Largest metadata object, in bytes of compact JSON."""
MAX_THREAD_BRANCHES: Final[int]
"""Branches one thread may record (`Store.add_branch`)."""
MAX_TURN_BYTES: Final[int]
"""Largest turn, in bytes of text (content, reasoning and tool data)."""
ROLES: Final[tuple[_Role, _Role, _Role, _Role]]
"""Role names in the order of their stored index."""
RESPONSE_ID_PATTERN: Final[str]
"""The ids `validate_response_id` takes, as a regular expression (canonical spelling only)."""
THREAD_ID_PATTERN: Final[str]
"""The ids `validate_thread_id` takes, as a regular expression."""

@final
class Retention:
    """How long threads and responses live, in seconds; the rules every store applies."""

    def __new__(
        cls,
        *,
        thread_inactivity_s: float = 7_776_000.0,
        thread_max_age_s: float = 31_536_000.0,
        response_ttl_s: float = 2_592_000.0,
        anchor_window_s: float = 86_400.0,
    ) -> Retention: ...
    @property
    def thread_inactivity_s(self) -> float:
        """A thread with no new message for this long expires."""
    @property
    def thread_max_age_s(self) -> float:
        """A thread older than this expires."""
    @property
    def response_ttl_s(self) -> float:
        """Responses expire this long after creation."""
    @property
    def anchor_window_s(self) -> float:
        """The window in which a response may be continued where a dialect enforces one."""
    def thread_expired(self, thread: Thread, now_ms: int) -> bool: ...
    def thread_cutoffs(self, now_ms: int) -> tuple[int, int]:
        """(oldest live last activity, oldest live creation), Unix ms."""
    def response_expired(self, response: Response, now_ms: int) -> bool: ...
    def response_cutoff(self, now_ms: int) -> int:
        """The oldest live response's creation time, Unix ms."""
    def check_anchor(self, response: Response, now_ms: int, windowed: bool) -> None:
        """StateConflict for a failed response; NotFound outside the window when `windowed`."""

@final
class ResponseInfo:
    """What to record about the response an `append` stores."""

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
    def output_count(self) -> int:
        """How many of the appended turns are outputs (at the end)."""
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

@final
class Thread:
    """A thread: a named, mutable pointer to the newest turn of a conversation."""

    def __new__(
        cls,
        id: str,
        owner: str,
        head: str | None,
        metadata_json: str,
        state: str,
        visible: bool,
        created_ms: int,
        last_activity_ms: int,
        message_count: int,
    ) -> Thread: ...
    @property
    def id(self) -> str: ...
    @property
    def owner(self) -> str: ...
    @property
    def head(self) -> str | None:
        """The newest turn's id, or None for an empty thread."""
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
    """A stored response: the turns one generation added, its status and usage."""

    def __new__(
        cls,
        id: str,
        owner: str,
        status: str,
        model: str,
        last_turn: str,
        parent_turn: str | None,
        input_count: int,
        output_count: int,
        thread_id: str | None,
        previous_response_id: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int,
        error: str | None,
        created_ms: int,
        metadata_json: str,
    ) -> Response: ...
    @property
    def id(self) -> str: ...
    @property
    def owner(self) -> str: ...
    @property
    def status(self) -> _ResponseStatus: ...
    @property
    def model(self) -> str: ...
    @property
    def last_turn(self) -> str:
        """Its last turn (the output), `msg_...`."""
    @property
    def parent_turn(self) -> str | None:
        """The turn its inputs follow, or None when it started a conversation."""
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
    @property
    def metadata_json(self) -> str: ...

@final
class Turn:
    """One turn of a history."""

    def __new__(
        cls,
        *,
        key: bytes,
        parent_key: bytes | None,
        role: _Role,
        content: str,
        reasoning: str | None,
        tool: str | None,
        depth: int,
        created_ms: int,
    ) -> Turn: ...
    @property
    def id(self) -> str:
        """`msg_...`."""
    @property
    def parent_id(self) -> str | None: ...
    @property
    def role(self) -> _Role: ...
    @property
    def content(self) -> str: ...
    @property
    def reasoning(self) -> str | None: ...
    @property
    def tool(self) -> str | None:
        """A tool call or result as JSON object text, if any."""
    @property
    def depth(self) -> int:
        """Position in its conversation, 1 for a root."""
    @property
    def created_ms(self) -> int: ...

@final
class Appended:
    """What an append wrote."""

    def __new__(
        cls, turn_ids: list[str], response: Response | None, thread: Thread | None
    ) -> Appended: ...
    @property
    def turn_ids(self) -> list[str]: ...
    @property
    def response(self) -> Response | None: ...
    @property
    def thread(self) -> Thread | None: ...

@final
class ThreadPage:
    """One page of `list_threads`, most recently active first."""

    def __new__(cls, threads: list[Thread], next_cursor: str | None) -> ThreadPage: ...
    @property
    def threads(self) -> list[Thread]: ...
    @property
    def next_cursor(self) -> str | None:
        """Pass as `after` for the next page; None on the last."""

# ---- the store's rules, shared with the PostgreSQL store -----------------------------------

def new_response_id() -> str:
    """A new `resp_` id, for naming a response before it is stored."""

def new_thread_id() -> str: ...
def new_turn_key(now_ms: int, parent: bytes | None = None) -> bytes:
    """A new 16-byte turn key, its time field above the parent's."""

def turn_id_string(key: bytes) -> str: ...
def parse_turn_id(text: str) -> bytes: ...
def validate_thread_id(thread_id: str) -> None: ...
def validate_response_id(response_id: str) -> None: ...
def validate_owner(owner: str) -> None: ...
def check_summary(owner: str, name: str, text: str | None = None) -> None:
    """Checks a summary a store is asked to keep (owner, key, the text's size)."""

def parse_thread_state(text: str) -> _ThreadState: ...
def check_state_change(old: str, new: str) -> None:
    """StateConflict unless a thread may go from `old` to `new`."""

# The store's decisions (rust/src/store/decide.rs), for the PostgreSQL store.
def check_thread_write(
    thread: Thread, expected_head: str | None = None, continued_turn: str | None = None
) -> None:
    """StateConflict unless turns may follow `thread`'s head (open; the head is
    `expected_head` and `continued_turn` when given)."""

def check_append_shape(turns: int, output_count: int | None, in_thread: bool) -> None:
    """InvalidInput unless an append of `turns` turns (`output_count` of them a response's
    outputs; None: no response) may go."""

def check_length(depth: int, added: int, rebase: bool = False) -> int:
    """The conversation's length after `added` more turns, or LimitExceeded."""

def check_create(thread_id: str, exist_ok: bool, live: bool, tombstoned: bool) -> bool:
    """A create meeting a live thread or a tombstone: True returns the live thread, False
    creates; StateConflict or NotFound otherwise."""

def check_response_id_free(response_id: str, taken: bool) -> None:
    """StateConflict when the response id is taken."""

def check_branch_room(thread_id: str, held: int, new: bool) -> None:
    """LimitExceeded when the thread may record no new branch."""

def check_metadata_change(thread_id: str, state: str, state_change: bool) -> None:
    """StateConflict when a thread in `state` may not take new metadata."""

def check_page_limit(limit: int) -> None:
    """InvalidInput unless a page may list `limit` threads."""

def not_found(kind: str, id: str | bytes) -> NotFound:
    """The NotFound error (not raised) for a missing thread, response or turn (16-byte key)."""

def normalize_metadata(value: _Metadata) -> str | None:
    """Metadata checked and re-encoded compactly as the store keeps it; None stays None."""

def parse_turns(
    turns: _Messages,
) -> list[tuple[int, bytes, bytes | None, bytes | None]]:
    """(role index, content, reasoning, tool), checked as every write checks turns."""

def parse_anchor(
    thread: str | None = None, response: str | None = None, turn: str | None = None
) -> tuple[_AnchorKind, Any]:
    """("root", None), ("thread", id), ("response", id) or ("turn", key)."""

def check_history(root: bool, limit: int | None = None) -> None:
    """InvalidInput for a history read that names no end (`root`) or a negative limit."""

def thread_cursor(last_activity_ms: int, thread_id: str) -> str: ...
def parse_thread_cursor(cursor: str) -> tuple[int, str]: ...
def quote(text: str) -> str:
    """`text` quoted as the core's error messages quote names."""

@final
class Store:
    """The conversation store: an LMDB file of turns, responses and threads. Every method
    releases the GIL while it touches the store; several threads and processes may share it."""

    def __new__(
        cls,
        path: str | PathLike[str],
        *,
        map_size: int | None = None,
        max_map_size: int | None = None,
        retention: Retention | None = None,
    ) -> Store: ...
    @property
    def path(self) -> Path:
        """The store's directory."""
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
    ) -> Thread:
        """Replaces the metadata and/or changes the state (open <-> locked, -> archived)."""
    def delete_thread(self, thread_id: str, *, owner: str = "default") -> None: ...
    def append(
        self,
        turns: Iterable[Mapping[str, str | None]],
        *,
        owner: str = "default",
        thread: str | None = None,
        previous_response_id: str | None = None,
        after_turn: str | None = None,
        response: ResponseInfo | None = None,
        expected_head: str | None = None,
        anchor_window: bool = False,
        settle_pending: bool = False,
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
    def add_branch(
        self,
        thread_id: str,
        response_id: str,
        *,
        owner: str = "default",
        after_turn: str | None = None,
        replaces: Sequence[str] = ...,
    ) -> None:
        """Records `response_id` (a reply stored outside the thread, after `after_turn` or as a
        new first message) as a branch of the thread, dropping the records of `replaces`."""
    def branches(self, thread_id: str, *, owner: str = "default") -> list[tuple[str, str | None]]:
        """The thread's recorded branches: (response id, the turn it continues or None)."""
    def children(self, turn_ids: Sequence[str], *, owner: str = "default") -> list[list[str]]:
        """For each of `turn_ids`, the ids of the turns that continue it, whichever route made
        them; empty for another owner's or a missing turn. One read for them all."""
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
    def put_summary(self, name: str, text: str, *, owner: str) -> None:
        """Keeps a summary the model wrote under `name` (the owner's own)."""
    def get_summary(self, name: str, *, owner: str) -> str | None:
        """The owner's summary kept under `name`, or None."""
    def get_pending(self, response_id: str, *, owner: str) -> bytes | None: ...
    def pending(self) -> list[tuple[str, str, bytes]]:
        """Every pending record as (owner, response id, payload)."""
    def sweep(self) -> SweepCounts:
        """Deletes expired threads and responses; returns how many of each, and turns."""
    def stats(self) -> StoreStats: ...
    def verify(self) -> None:
        """Checks internal consistency; raises StoreFormatError on the first problem."""

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
    def assemble_history(
        self,
        history: Iterable[Turn],
        inputs: _Messages,
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
    ) -> Assembly:
        """A history another store read, then `inputs`, assembled as `assemble` does."""
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

COMPACTION_KEY_BYTES: Final[int]

def seal_compaction(key: bytes, owner: str, text: str) -> str:
    """`text` sealed under `key` for `owner`: an opaque `encrypted_content`."""

def open_compaction(key: bytes, owner: str, sealed: str) -> str:
    """The text of an item sealed with this key for this owner; `InvalidInput` otherwise."""

def convert_for_ctransformers(
    src: str | PathLike[str],
    dst: str | PathLike[str],
    progress: Callable[[int, int], object] | None = None,
) -> dict[str, Any]: ...

@final
class Grammars:
    """One model's format compiler: a trie of its vocabulary for llguidance."""

    def __new__(cls, tokenizer: Tokenizer) -> Grammars: ...
    def compile(
        self, kind: Literal["json_object", "json_schema", "lark"], source: str | None = None
    ) -> Constraint:
        """A fresh matcher; `InvalidInput` with llguidance's reason when `source` does not
        compile."""

@final
class Constraint:
    """One sequence's matcher: mask the logits, then advance with the sampled token."""

    def apply(self, address: int, length: int) -> None:
        """Sets disallowed logits at `address` (`length` float32) to -inf, in place."""
    def advance(self, token: int) -> bool:
        """True when the output is complete; `StateConflict` for a token it did not allow."""
    @property
    def accepting(self) -> bool: ...
    def allowed(self) -> list[int]: ...

# `llama_batch`'s size ("size") and field offsets as `LlamaSteps` lays it out.
LLAMA_BATCH_LAYOUT: Final[list[tuple[str, int]]]

@final
class LlamaSteps:
    """The llama.cpp backend's sequences and step loop, calling the C API directly."""

    def __new__(
        cls,
        addresses: tuple[int, int, int, int, int],
        *,
        n_vocab: int,
        sequences: int,
        context_length: int,
        batch_size: int,
        group: int | None = None,
    ) -> LlamaSteps:
        """`addresses`: context, memory, `llama_decode`, `llama_get_logits_ith`,
        `llama_memory_seq_rm` of one loaded libllama."""
    def held(self, seq: int) -> list[int]: ...
    def evaluated(self, seq: int) -> list[int]: ...
    def prefill(self, seq: int, keep: int, ids: Sequence[int]) -> None: ...
    def step(
        self,
        wants: Sequence[tuple[int, float, int, float, float, int]],
        constraints: Sequence[Constraint | None] = ...,
    ) -> list[int | None]:
        """`wants`: (seq, temperature, top_k, top_p, repetition_penalty, seed) each; the
        next token of each (None: its context is full). `BackendError` when decoding fails."""
    def decode_time(self) -> tuple[float, int]:
        """(seconds, calls) spent in `llama_decode` so far."""
    def clear(self, seq: int) -> None: ...
    def restore(self, seq: int, ids: Sequence[int]) -> None: ...
