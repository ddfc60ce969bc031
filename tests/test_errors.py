"""One set of limits and one id grammar for the schemas and the engine, errors that carry what
they are about, and the dialect toolkit's id, paging and error helpers."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import pytest
from threadloom import _core, limits
from threadloom.backends.base import SamplingParams
from threadloom.errors import InvalidInput, LimitExceeded, ModelNotFound, NotFound, StateConflict
from threadloom.server.errors import ApiError
from threadloom.server.routes import common
from threadloom.server.schemas import chat, ids


def _schema_accepts(field_type: object, value: object) -> bool:
    probe = msgspec.defstruct("Probe", [("x", field_type)])
    try:
        msgspec.convert({"x": value}, probe)
    except msgspec.ValidationError:
        return False
    return True


def _engine_accepts(**settings: object) -> bool:
    try:
        SamplingParams(**settings).validate()  # type: ignore[arg-type]
    except (InvalidInput, LimitExceeded):
        return False
    return True


@pytest.mark.parametrize("n", [0, 1, limits.MAX_STOPS, limits.MAX_STOPS + 1, 16, 17])
def test_stop_count_is_one_limit(n: int) -> None:
    stops = [f"s{i}" for i in range(n)]
    decoder = msgspec.json.Decoder(chat.ChatRequest)
    body = msgspec.json.encode({"messages": [{"role": "user", "content": "x"}], "stop": stops})
    try:
        decoder.decode(body)
        schema = True
    except msgspec.ValidationError:
        schema = False
    assert schema == _engine_accepts(stop=tuple(stops)) == (n <= 4)


@pytest.mark.parametrize(
    ("field", "kind", "values"),
    [
        ("temperature", limits.Temperature, [-0.01, 0.0, 1.0, 2.0, 2.01]),
        ("top_p", limits.TopP, [0.0, 1e-9, 0.5, 1.0, 1.01]),
        ("top_k", limits.TopK, [-1, 0, 40, 2**31 - 1, 2**31]),
        ("repetition_penalty", limits.RepetitionPenalty, [0.49, 0.5, 1.1, 2.0, 2.01]),
        ("seed", limits.Seed, [-(2**31) - 1, -(2**31), 0, 2**31 - 1, 2**31]),
    ],
)
def test_schema_and_engine_bounds_agree(field: str, kind: object, values: list[object]) -> None:
    verdicts = [(_schema_accepts(kind, v), _engine_accepts(**{field: v})) for v in values]
    assert all(schema == engine for schema, engine in verdicts), verdicts
    # The edges are real: each field refuses its first and last probe, takes the middle one.
    assert [v[0] for v in verdicts] == [False, True, True, True, False]


def test_engine_errors_name_the_field() -> None:
    with pytest.raises(InvalidInput) as e:
        SamplingParams(temperature=3.0).validate()
    assert e.value.param == "temperature"
    with pytest.raises(InvalidInput) as e:
        SamplingParams(top_p=0.0).validate()
    assert e.value.param == "top_p"


def test_message_limit_is_the_core_one() -> None:
    assert limits.MAX_MESSAGES == _core.MAX_THREAD_MESSAGES
    limits.check_message_count(limits.MAX_MESSAGES)
    with pytest.raises(LimitExceeded, match="at most") as e:
        limits.check_message_count(limits.MAX_MESSAGES + 1)
    assert e.value.param == "input"
    probe = Annotated[list[int], msgspec.Meta(max_length=limits.MAX_MESSAGES)]
    assert not _schema_accepts(probe, [0] * (limits.MAX_MESSAGES + 1))


def _core_takes_response_id(rid: str) -> bool:
    try:
        _core.validate_response_id(rid)
    except InvalidInput:
        return False
    return True


def test_response_id_grammar_is_the_core_one() -> None:
    rid = _core.new_response_id()
    cases = [
        rid,
        rid.upper(),
        "resp_" + rid[5:].upper(),  # upper case: once taken by the core, refused by the schema
        "resp_z" + rid[6:],  # past 128 bits: once taken by the schema, refused by the core
        "resp_7" + rid[6:],
        rid + "\n",
        "resp_",
    ]
    for case in cases:
        grammar = ids.RESPONSE_ID.fullmatch(case) is not None
        assert grammar == _schema_accepts(ids.ResponseId, case) or case.endswith("\n")
        assert grammar == _core_takes_response_id(case), case
    assert ids.RESPONSE_ID_PATTERN == _core.RESPONSE_ID_PATTERN


def test_thread_id_grammar_is_the_core_one() -> None:
    for case in ["t", "a.b:c-d_e", ".", "..", "...", "", "a b", "é", "x" * 128, "x" * 129]:
        try:
            _core.validate_thread_id(case)
            core = True
        except InvalidInput:
            core = False
        assert (ids.THREAD_ID.fullmatch(case) is not None) == core, case


def test_minted_ids_are_in_the_store_format() -> None:
    minted = common.mint_id("resp")
    assert ids.RESPONSE_ID.fullmatch(minted)
    _core.validate_response_id(minted)
    assert common.mint_id("conv") != common.mint_id("conv")
    assert ids.THREAD_ID.fullmatch(common.mint_id("conv"))


def test_check_id_refuses_naming_the_field() -> None:
    assert common.check_id("t1", ids.THREAD_ID, "thread", "thread_id") == "t1"
    with pytest.raises(ApiError) as e:
        common.check_id("..", ids.THREAD_ID, "thread", "threadId")
    assert (e.value.status, e.value.param, e.value.code) == (400, "threadId", "invalid_id")
    assert "1 to 128 characters" in e.value.message
    with pytest.raises(ApiError) as e:
        common.check_id("resp_x", ids.RESPONSE_ID, "response", "response_id")
    assert e.value.message == "invalid response id 'resp_x'"


def test_about_renames_the_field_and_keeps_the_status() -> None:
    cases = [
        (NotFound("gone", param="x"), 404, "not_found"),
        (StateConflict("locked"), 409, "conflict"),
        (LimitExceeded("big"), 400, "limit_exceeded"),
        (InvalidInput("bad"), 400, "invalid_value"),
    ]
    for error, status, code in cases:
        api = common.about(error, "previousResponseId")
        assert isinstance(api, ApiError)
        assert (api.status, api.code, api.param) == (status, code, "previousResponseId")
    other = RuntimeError("bug")
    assert common.about(other, "x") is other


def test_errors_carry_what_they_are_about() -> None:
    e = NotFound("no turn 'msg_x' in thread 't'", kind="turn", id="msg_x")
    assert (e.kind, e.id, e.param) == ("turn", "msg_x", None)
    plain = StateConflict("locked")
    assert (plain.kind, plain.id) == (None, None)


def test_unknown_model_names_itself() -> None:
    from threadloom.registry.pool import Models
    from threadloom.registry.spec import ModelSpec

    def never(spec: ModelSpec, group: object) -> Any:
        raise AssertionError("no model is loaded to refuse an unknown name")

    models = Models([ModelSpec(name="a")], never)
    with pytest.raises(ModelNotFound) as e:
        models.entry("nope", "model")
    assert (e.value.kind, e.value.id, e.value.param) == ("model", "nope", "model")


def test_page_after() -> None:
    items = ["a", "b", "c", "d", "e"]
    assert common.page_after(items, str, after=None, limit=2, kind="item") == (["a", "b"], True)
    assert common.page_after(items, str, after="b", limit=2, kind="item") == (["c", "d"], True)
    assert common.page_after(items, str, after="c", limit=2, kind="item") == (["d", "e"], False)
    assert common.page_after(items, str, after="e", limit=2, kind="item") == ([], False)
    with pytest.raises(ApiError) as e:
        common.page_after(items, str, after="z", limit=2, kind="input item")
    assert (e.value.status, e.value.param, e.value.message) == (400, "after", "no input item 'z'")


def test_generation_failed() -> None:
    from threadloom.events import Result, Usage
    from threadloom.recording import THREAD_DELETED

    def failed(error: str | None) -> Result:
        return Result(
            status="failed",
            text="",
            reasoning=None,
            finish_reason="error",
            usage=Usage(1, 0, 0),
            model="m",
            error=error,
        )

    deleted = common.generation_failed(failed(THREAD_DELETED))
    assert (deleted.status, deleted.code) == (409, "conversation_deleted")
    broken = common.generation_failed(failed("CUDA fell over"))
    assert (broken.status, broken.code, broken.message) == (
        500,
        "server_error",
        common.GENERATION_FAILED,
    )
    assert "CUDA" not in broken.message
