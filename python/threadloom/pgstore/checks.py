"""Input checks and id formats of the store, mirrored from the Rust core (rust/src/ids.rs,
rust/src/store/records.rs, rust/src/py/store.rs) so that both backends accept, refuse and word
errors alike. The Python store tests run against both and compare error classes and messages."""

from __future__ import annotations

import decimal
import json
import math
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from threadloom.errors import InvalidInput, LimitExceeded, StateConflict

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
ENCODED_LEN = 26
THREAD_PREFIX, RESPONSE_PREFIX, TURN_PREFIX = "thread_", "resp_", "msg_"

MAX_METADATA_BYTES = 16 * 1024
MAX_THREAD_MESSAGES = 10_000
MAX_TURN_BYTES = 64 * 1024 * 1024
# serde_json refuses documents nested deeper than this.
MAX_JSON_DEPTH = 127

ROLES = ("system", "user", "assistant", "tool")
STATES = ("open", "locked", "archived")
STATUSES = ("completed", "incomplete", "failed")
_THREAD_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def debug_str(text: str) -> str:
    """`text` as Rust's `{:?}` writes a string, which is how the core quotes names in errors."""
    out = ['"']
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif c == "\0":
            out.append("\\0")
        elif not c.isprintable():
            out.append(f"\\u{{{ord(c):x}}}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


# ---- ids ------------------------------------------------------------------------------------


def encode(bits: bytes) -> str:
    n = int.from_bytes(bits, "big")
    chars = []
    for _ in range(ENCODED_LEN):
        chars.append(ALPHABET[n & 31])
        n >>= 5
    return "".join(reversed(chars))


def decode(text: str) -> bytes | None:
    if len(text) != ENCODED_LEN or not text.isascii():
        return None
    n = 0
    for i, c in enumerate(text.lower()):
        v = _VALUE.get(c)
        # 26 * 5 = 130 bits: the first character may only carry the top 3 bits.
        if v is None or (i == 0 and v > 0b111):
            return None
        n = (n << 5) | v
    return n.to_bytes(16, "big")


def new_thread_id() -> str:
    return THREAD_PREFIX + encode(secrets.token_bytes(16))


def new_response_id() -> str:
    return RESPONSE_PREFIX + encode(secrets.token_bytes(16))


def turn_id_string(key: bytes) -> str:
    return TURN_PREFIX + encode(key)


def parse_turn_id(text: str) -> bytes:
    key = decode(text[len(TURN_PREFIX) :]) if text.startswith(TURN_PREFIX) else None
    if key is None:
        raise InvalidInput(f"invalid turn id {debug_str(text)}")
    return key


_RANDOM_BITS = 80
_TIME_MAX = (1 << 48) - 1


def new_turn_key(now_ms: int, parent: bytes | None) -> bytes:
    """48 bits of time over 80 random bits, the child's time above its parent's: the same
    time-ordered keys as the LMDB store, so ids sort along a conversation in both backends."""
    clock = min(max(now_ms, 0), _TIME_MAX)
    after_parent = (int.from_bytes(parent, "big") >> _RANDOM_BITS) + 1 if parent else 0
    time_field = min(max(clock, after_parent), _TIME_MAX)
    random = int.from_bytes(secrets.token_bytes(10), "big")
    return ((time_field << _RANDOM_BITS) | random).to_bytes(16, "big")


def validate_thread_id(thread_id: str) -> None:
    if not _THREAD_ID.fullmatch(thread_id):
        raise InvalidInput(
            f"invalid thread id {debug_str(thread_id)}: use 1 to 128 characters of [A-Za-z0-9_.:-]"
        )


def validate_response_id(response_id: str) -> None:
    if not response_id.startswith(RESPONSE_PREFIX) or decode(response_id[5:]) is None:
        raise InvalidInput(f"invalid response id {debug_str(response_id)}")


def validate_owner(owner: str) -> None:
    try:
        size = len(owner.encode("utf-8"))
    except UnicodeEncodeError:
        size = 0
    if not 0 < size <= 128 or "\0" in owner:
        raise InvalidInput(f"invalid owner {debug_str(owner)}: use 1 to 128 characters without NUL")


def parse_state(text: str) -> str:
    if text not in STATES:
        raise InvalidInput(
            f"invalid thread state {debug_str(text)}: expected open, locked or archived"
        )
    return text


def check_transition(old: str, new: str) -> None:
    """open <-> locked; open or locked -> archived; nothing leaves archived."""
    legal = (old == new and old != "archived") or (old, new) in {
        ("open", "locked"),
        ("locked", "open"),
        ("open", "archived"),
        ("locked", "archived"),
    }
    if not legal:
        raise StateConflict(f"cannot change thread state from {old} to {new}")


# ---- metadata --------------------------------------------------------------------------------


def metadata_text(value: object) -> str | None:
    """Metadata as the API takes it: a dict (encoded here), JSON text in str or bytes, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("metadata bytes are not UTF-8") from None
    if not isinstance(value, dict):
        raise InvalidInput("metadata must be a dict or JSON text")
    try:
        return json.dumps(value)
    except (TypeError, ValueError, RecursionError) as e:
        raise InvalidInput(f"metadata cannot be encoded as JSON: {e}") from None


class _Invalid(Exception):
    pass


_U64_MAX = (1 << 64) - 1
_I32_MAX = (1 << 31) - 1
# serde_json's table: 1e0 ..= 1e308, each the nearest double (as Python's literals are).
_POW10 = [float(f"1e{i}") for i in range(309)]
_NUMBER = re.compile(r"(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?)(\d+))?")


def _from_parts(positive: bool, significand: int, exponent: int) -> float:
    f = float(significand)
    while True:
        if abs(exponent) < len(_POW10):
            if exponent >= 0:
                f *= _POW10[exponent]
                if math.isinf(f):
                    raise _Invalid("number out of range")
            else:
                f /= _POW10[-exponent]
            break
        if f == 0.0:
            break
        if exponent >= 0:
            raise _Invalid("number out of range")
        f /= 1e308
        exponent += 308
    return f if positive else -f


def _parse_number(text: str) -> int | float:
    """A JSON number exactly as serde_json (without its float_roundtrip feature) reads it:
    integers that fit i64/u64 stay integers; the rest become the f64 that its decimal
    significand (up to 19 digits; later ones are dropped) times a power of ten rounds to."""
    m = _NUMBER.fullmatch(text)
    if m is None:
        raise _Invalid("invalid number")
    sign, whole, fraction, exp_sign, exp_digits = m.groups()
    positive = sign == ""
    significand = exponent = 0
    overflowed = False
    for d in whole:
        if overflowed or significand * 10 + int(d) > _U64_MAX:
            overflowed = True
            exponent += 1  # a digit past u64 only scales the number
        else:
            significand = significand * 10 + int(d)
    if fraction is None and exp_digits is None and not overflowed:
        if positive:
            return significand
        if 0 < significand <= 1 << 63:
            return -significand
        return -float(significand)  # -0 and below i64 are floats
    for d in fraction or "":
        if significand * 10 + int(d) > _U64_MAX:
            break  # further digits are dropped
        significand = significand * 10 + int(d)
        exponent -= 1
    if exp_digits is not None:
        exp = int(exp_digits)
        if exp > _I32_MAX:
            if significand != 0 and exp_sign != "-":
                raise _Invalid("number out of range")
            return 0.0 if positive else -0.0
        exponent = exponent - exp if exp_sign == "-" else exponent + exp
    return _from_parts(positive, significand, exponent)


def _reject_constant(name: str) -> Any:
    raise _Invalid(f"expected value, found {name}")


def _depth(value: object) -> int:
    depth = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in node)
    return depth


def _format_float(f: float) -> str:
    """A float as serde_json writes it: the shortest digits that read back the same, plainly
    from 1e-5 to below 1e16 (`0.00001`, `100.0`), else in exponent form (`1e+16`, `1.5e-7`)."""
    if f == 0:
        return "-0.0" if math.copysign(1.0, f) < 0 else "0.0"
    sign = "-" if f < 0 else ""
    t = decimal.Decimal(repr(abs(f))).normalize().as_tuple()
    digits = "".join(map(str, t.digits))
    exp = int(t.exponent)
    length = len(digits)
    kk = length + exp  # 10^(kk-1) <= |f| < 10^kk
    if exp >= 0 and kk <= 16:
        body = digits + "0" * exp + ".0"
    elif 0 < kk <= 16:
        body = digits[:kk] + "." + digits[kk:]
    elif -5 < kk <= 0:
        body = "0." + "0" * -kk + digits
    else:
        mantissa = digits if length == 1 else f"{digits[0]}.{digits[1:]}"
        body = f"{mantissa}e{'+' if kk > 0 else ''}{kk - 1}"
    return sign + body


def _compact(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{_compact(k)}:{_compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_compact(v) for v in value) + "]"
    if isinstance(value, float):
        return _format_float(value)
    return json.dumps(value, ensure_ascii=False)


def normalize_metadata(text: str | None) -> str:
    """Checks that `text` is a JSON object of at most 16 KB and returns it compact, exactly as
    the core re-encodes it (serde_json with preserved key order)."""
    if text is None:
        return "{}"
    try:
        value = json.loads(
            text,
            parse_int=_parse_number,
            parse_float=_parse_number,
            parse_constant=_reject_constant,
        )
        if _depth(value) > MAX_JSON_DEPTH:
            raise _Invalid("recursion limit exceeded")
        compact = _compact(value)
        # Lone surrogates (`"\ud800"`) decode in Python but are not valid JSON text.
        size = len(compact.encode("utf-8"))
    except json.JSONDecodeError as e:
        reason = "trailing characters" if e.msg == "Extra data" else e.msg
        raise InvalidInput(
            f"metadata is not valid JSON: {reason} at line {e.lineno} column {e.colno}"
        ) from None
    except (_Invalid, ValueError, RecursionError) as e:
        raise InvalidInput(f"metadata is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidInput("metadata must be a JSON object")
    if size > MAX_METADATA_BYTES:
        raise LimitExceeded(f"metadata is {size} bytes encoded; the limit is {MAX_METADATA_BYTES}")
    return compact


# ---- turns and anchors ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewTurn:
    role: int
    content: bytes
    reasoning: bytes | None
    tool: bytes | None = None

    @property
    def size(self) -> int:
        """The bytes of text the turn holds (content, reasoning and tool data)."""
        return len(self.content) + len(self.reasoning or b"") + len(self.tool or b"")


def _check_tool(text: str, i: int) -> None:
    """Tool data must be a JSON object (stored as given, as the core stores it)."""
    try:
        value = json.loads(
            text,
            parse_int=_parse_number,
            parse_float=_parse_number,
            parse_constant=_reject_constant,
        )
        if _depth(value) > MAX_JSON_DEPTH:
            raise _Invalid("recursion limit exceeded")
    except (json.JSONDecodeError, _Invalid, ValueError, RecursionError) as e:
        raise InvalidInput(f"turns[{i}].tool is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"turns[{i}].tool must be a JSON object")


def _field(item: Mapping[str, Any], i: int, name: str) -> str | None:
    value = item.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return value
    raise InvalidInput(f"turns[{i}].{name} must be a string")


def parse_turns(turns: Iterable[Any]) -> list[NewTurn]:
    """The turns an append or assembly takes: dicts with role, content and optional reasoning
    and tool data (a JSON object's text). Text is returned UTF-8 encoded, as it is stored."""
    out = []
    for i, item in enumerate(turns):
        if not isinstance(item, dict):
            raise InvalidInput(f"turns[{i}] must be a dict with role and content")
        role = _field(item, i, "role")
        if role is None:
            raise InvalidInput(f"turns[{i}].role is missing")
        content = _field(item, i, "content")
        if content is None:
            raise InvalidInput(f"turns[{i}].content is missing")
        reasoning = _field(item, i, "reasoning")
        tool = _field(item, i, "tool")
        if role not in ROLES:
            raise InvalidInput(
                f"turns[{i}].role: invalid role {debug_str(role)}: "
                "expected system, user, assistant or tool"
            )
        if tool is not None:
            _check_tool(tool, i)
        out.append(
            NewTurn(
                ROLES.index(role),
                content.encode("utf-8"),
                None if reasoning is None else reasoning.encode("utf-8"),
                None if tool is None else tool.encode("utf-8"),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class Anchor:
    """Where turns go or a history ends: kind is root, thread, response or turn."""

    kind: str
    thread: str = ""
    response: str = ""
    turn: bytes = b""


def anchor_from(thread: str | None, response: str | None, turn: str | None) -> Anchor:
    given = [x is not None for x in (thread, response, turn)]
    if sum(given) > 1:
        raise InvalidInput("give at most one of thread, response and turn")
    if thread is not None:
        return Anchor("thread", thread=thread)
    if response is not None:
        return Anchor("response", response=response)
    if turn is not None:
        return Anchor("turn", turn=parse_turn_id(turn))
    return Anchor("root")
