"""`GET /metrics`: the Prometheus text format, request counters and latency by route template,
token counters from the engine hook, pool and store gauges, and authentication."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("aiohttp")
from aiohttp.test_utils import TestClient
from server_support import parse_sse, scripted_app
from threadloom.server.keys import ENGINE
from threadloom.server.metrics import CONTENT_TYPE, LATENCY_BUCKETS

pytestmark = pytest.mark.asyncio

MakeClient = Callable[..., Awaitable[TestClient]]
Sample = tuple[str, frozenset[tuple[str, str]]]

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"(?:,|$)')


def parse(text: str) -> tuple[dict[Sample, float], dict[str, str]]:
    """Samples and declared types; strict about the parts of the format the server uses."""
    assert text.endswith("\n")
    samples: dict[Sample, float] = {}
    types: dict[str, str] = {}
    helped: set[str] = set()
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            helped.add(line.split(" ")[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name in helped and name not in types, line
            types[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, f"bad sample line {line!r}"
        raw = m.group("labels") or ""
        labels = [(x.group("name"), x.group("value")) for x in _LABEL.finditer(raw)]
        assert "".join(x.group(0) for x in _LABEL.finditer(raw)) == raw, line
        name = m.group("name")
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or (family in types and types[family] == "histogram"), line
        key = (name, frozenset(labels))
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = math.inf if m.group("value") == "+Inf" else float(m.group("value"))
    return samples, types


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict[Sample, float], name: str, **labels: str) -> float:
    """Sum over every series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


make_app = scripted_app


@pytest_asyncio.fixture
async def make_client(aiohttp_client: Any, tmp_path: Path) -> MakeClient:
    async def make(**kwargs: Any) -> TestClient:
        return await aiohttp_client(make_app(tmp_path, **kwargs))  # type: ignore[no-any-return]

    return make


async def scrape(client: TestClient, **kwargs: Any) -> dict[Sample, float]:
    r = await client.get("/metrics", **kwargs)
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"] == CONTENT_TYPE
    samples, _ = parse(await r.text())
    return samples


# ---- format ----------------------------------------------------------------------------------


async def test_exposition_format_and_types(make_client: MakeClient) -> None:
    client = await make_client()
    assert (await client.get("/v1/models")).status == 200
    r = await client.get("/metrics")
    samples, types = parse(await r.text())
    assert types == {
        "threadloom_http_requests_total": "counter",
        "threadloom_http_request_duration_seconds": "histogram",
        "threadloom_prompt_tokens_total": "counter",
        "threadloom_cached_prompt_tokens_total": "counter",
        "threadloom_generated_tokens_total": "counter",
        "threadloom_generations_total": "counter",
        "threadloom_model_loaded": "gauge",
        "threadloom_slots": "gauge",
        "threadloom_slots_busy": "gauge",
        "threadloom_queue_depth": "gauge",
        "threadloom_store_threads": "gauge",
        "threadloom_store_responses": "gauge",
        "threadloom_store_turns": "gauge",
        "threadloom_store_file_bytes": "gauge",
        "threadloom_store_map_bytes": "gauge",
        "threadloom_threads": "gauge",
        "threadloom_queue_wait_seconds": "histogram",
        "threadloom_prompt_eval_seconds": "histogram",
        "threadloom_time_to_first_token_seconds": "histogram",
        "threadloom_decode_tokens_per_second": "histogram",
    }
    # Unlabelled counters exist before anything happened.
    assert total(samples, "threadloom_generated_tokens_total") == 0
    # The histogram: cumulative buckets at every bound, +Inf equal to the count.
    series = {"method": "GET", "route": "/v1/models"}
    name = "threadloom_http_request_duration_seconds"
    counts = [value(samples, f"{name}_bucket", **series, le=repr(b)) for b in LATENCY_BUCKETS]
    counts.append(value(samples, f"{name}_bucket", **series, le="+Inf"))
    assert counts == sorted(counts) and counts[-1] == 1
    assert value(samples, f"{name}_count", **series) == 1
    assert 0 < value(samples, f"{name}_sum", **series) < 10


async def test_label_values_are_escaped() -> None:
    from threadloom.server.metrics import Counter

    c = Counter("x_total", "help", ("route",))
    c.inc(('a"b\\c\nd',))
    line = list(c.render())[-1]
    assert line == 'x_total{route="a\\"b\\\\c\\nd"} 1'
    samples, _ = parse("# HELP x_total help\n# TYPE x_total counter\n" + line + "\n")
    assert list(samples.values()) == [1]


# ---- request counters ------------------------------------------------------------------------


async def test_request_counters_count_exactly_the_requests_made(make_client: MakeClient) -> None:
    client = await make_client()
    before = await scrape(client)
    first = await (await client.post("/v1/responses", json={"input": "one"})).json()
    rid = first["id"]
    r = await client.post("/v1/responses", json={"input": "two", "previous_response_id": rid})
    assert r.status == 200
    for _ in range(3):
        assert (await client.get(f"/v1/responses/{rid}")).status == 200
    assert (await client.get("/v1/responses/resp_00000000000000000000000000")).status == 404
    assert (await client.get("/v1/responses/not-an-id")).status == 400
    assert (await client.post("/v1/responses", data=b"{")).status == 400
    assert (await client.get("/no/such/path/12345")).status == 404
    assert (await client.get("/another/unknown")).status == 404
    assert (await client.put("/v1/models")).status == 405
    assert (await client.request("PROPFIND", "/v1/models")).status == 405
    after = await scrape(client)

    def delta(method: str, route: str, status: int) -> float:
        labels = {"method": method, "route": route, "status": str(status)}
        return value(after, "threadloom_http_requests_total", **labels) - value(
            before, "threadloom_http_requests_total", **labels
        )

    one = "/v1/responses/{response_id}"
    assert delta("POST", "/v1/responses", 200) == 2
    assert delta("POST", "/v1/responses", 400) == 1
    assert delta("GET", one, 200) == 3
    assert delta("GET", one, 404) == 1
    assert delta("GET", one, 400) == 1
    assert delta("GET", "unmatched", 404) == 2
    assert delta("PUT", "unmatched", 405) == 1
    assert delta("other", "unmatched", 405) == 1
    assert delta("GET", "/metrics", 200) == 1  # the first scrape; a scrape never sees itself
    grand = total(after, "threadloom_http_requests_total")
    assert grand - total(before, "threadloom_http_requests_total") == 13
    # No raw path ever becomes a label value.
    routes = {dict(ls).get("route") for (_, ls) in after}
    assert not any(r and (rid in r or "unknown" in r or "not-an-id" in r) for r in routes)
    name = "threadloom_http_request_duration_seconds_count"
    assert value(after, name, method="GET", route=one) == 5
    assert value(after, name, method="POST", route="/v1/responses") == 3


async def test_auth_failures_are_counted_and_metrics_need_a_key(make_client: MakeClient) -> None:
    client = await make_client(api_keys={"k1": "alice"}, metrics_key="operator")
    r = await client.get("/metrics")
    assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_api_key"
    # A tenant's key does not read what every tenant did (the store, the token counters).
    r = await client.get("/metrics", headers={"Authorization": "Bearer k1"})
    assert r.status == 403 and (await r.json())["error"]["code"] == "invalid_api_key"
    assert (await client.get("/v1/models", headers={"X-API-Key": "wrong"})).status == 401
    assert (await client.get("/health")).status == 200  # open, and still counted
    samples = await scrape(client, headers={"Authorization": "Bearer operator"})
    name = "threadloom_http_requests_total"
    assert value(samples, name, method="GET", route="/metrics", status="401") == 1
    assert value(samples, name, method="GET", route="/metrics", status="403") == 1
    assert value(samples, name, method="GET", route="/v1/models", status="401") == 1
    assert value(samples, name, method="GET", route="/health", status="200") == 1


# ---- tokens ----------------------------------------------------------------------------------


async def test_token_counters_equal_reported_usage(make_client: MakeClient) -> None:
    client = await make_client()
    prompt = generated = cached = 0

    first = await (await client.post("/v1/responses", json={"input": "Hello"})).json()
    second = await (
        await client.post(
            "/v1/responses", json={"input": "again", "previous_response_id": first["id"]}
        )
    ).json()
    for body in (first, second):
        prompt += body["usage"]["input_tokens"]
        generated += body["usage"]["output_tokens"]
        cached += body["usage"]["input_tokens_details"]["cached_tokens"]
    assert second["usage"]["input_tokens_details"]["cached_tokens"] > 0

    r = await client.post("/v1/responses", json={"input": "streamed", "stream": True})
    frames = parse_sse(await r.text())
    usage = frames[-1][1]["response"]["usage"]
    prompt += usage["input_tokens"]
    generated += usage["output_tokens"]
    cached += usage["input_tokens_details"]["cached_tokens"]

    chat = await (
        await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "long:7"}], "max_tokens": 5},
        )
    ).json()
    prompt += chat["usage"]["prompt_tokens"]
    generated += chat["usage"]["completion_tokens"]
    cached += chat["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert chat["choices"][0]["finish_reason"] == "length"

    samples = await scrape(client)
    assert total(samples, "threadloom_prompt_tokens_total") == prompt > 0
    assert total(samples, "threadloom_generated_tokens_total") == generated > 0
    assert total(samples, "threadloom_cached_prompt_tokens_total") == cached
    assert total(samples, "threadloom_generations_total", status="completed") == 3
    assert total(samples, "threadloom_generations_total", status="incomplete") == 1
    # Errors before generation (a bad body) produce no generation.
    assert (await client.post("/v1/responses", json={"input": []})).status == 400
    again = await scrape(client)
    assert total(again, "threadloom_generations_total") == 4


# ---- gauges ----------------------------------------------------------------------------------


async def test_pool_and_store_gauges(make_client: MakeClient) -> None:
    client = await make_client(delay_s=0.02, slots=2, threads=3)
    engine = client.app[ENGINE]
    await client.post("/v1/responses", json={"input": "Hello"})
    samples = await scrape(client)
    assert total(samples, "threadloom_slots") == 2
    assert total(samples, "threadloom_threads") == 3
    # The one generation's scheduler timings, one observation each.
    for name in (
        "threadloom_queue_wait_seconds",
        "threadloom_prompt_eval_seconds",
        "threadloom_time_to_first_token_seconds",
        "threadloom_decode_tokens_per_second",
    ):
        assert value(samples, f"{name}_count") == 1, name
    assert value(samples, "threadloom_time_to_first_token_seconds_sum") > 0
    assert total(samples, "threadloom_slots_busy") == 0
    assert total(samples, "threadloom_queue_depth") == 0
    stats = engine.store.stats()
    assert stats["responses"] == 1
    for key, n in stats.items():
        assert value(samples, f"threadloom_store_{key}") == n, key

    # Three long generations on two slots: two run, one waits.
    body = {"input": "long:200", "stream": True}
    responses = [await client.post("/v1/responses", json=body) for _ in range(2)]
    for r in responses:
        await r.content.readuntil(b"\n\n")  # the stream is open: its slot is taken
    waiting = asyncio.ensure_future(client.post("/v1/responses", json=body))
    for _ in range(200):
        if engine.scheduler.waiting:
            break
        await asyncio.sleep(0.01)
    busy = await scrape(client)
    assert total(busy, "threadloom_slots_busy") == 2
    assert total(busy, "threadloom_queue_depth") == 1
    for r in responses:
        r.close()
    third = await waiting
    third.close()


async def test_parse_rejects_malformed_text() -> None:
    with pytest.raises(AssertionError):
        parse("# HELP a h\n# TYPE a counter\na{x=1} 1\n")  # unquoted label value
    with pytest.raises(AssertionError):
        parse("undeclared 1\n")


async def test_queue_depth_under_more_requests_than_worker_threads(
    make_client: MakeClient,
) -> None:
    """Twelve generations on two slots: ten wait. More waiters than the engine has worker
    threads once deadlocked the server (every thread waited for a slot, and the generations
    that free slots queued behind them)."""
    client = await make_client(delay_s=0.005, slots=2)
    engine = client.app[ENGINE]
    body = {"input": "long:20"}
    posts = [asyncio.ensure_future(client.post("/v1/responses", json=body)) for _ in range(12)]
    deepest = 0.0
    deadline = asyncio.get_running_loop().time() + 30
    while not all(p.done() for p in posts):
        assert asyncio.get_running_loop().time() < deadline, "the server stopped answering"
        samples = await scrape(client)
        deepest = max(deepest, total(samples, "threadloom_queue_depth"))
        assert total(samples, "threadloom_slots_busy") <= 2
        await asyncio.sleep(0.01)
    assert deepest >= 4 and engine.scheduler.waiting == 0
    statuses = [p.result().status for p in posts]
    assert statuses == [200] * 12
    samples = await scrape(client)
    assert total(samples, "threadloom_generations_total", status="incomplete") == 12
    assert total(samples, "threadloom_generated_tokens_total") == 12 * 20


async def test_no_tenant_reads_metrics_without_the_operator_key(make_client: MakeClient) -> None:
    # Issue 29: as tenant B, the store and token counters moved with tenant A's work. With API
    # keys and no metrics key configured, /metrics is nobody's; with one, only its holder's.
    client = await make_client(api_keys={"ka": "alice", "kb": "bob"})
    r = await client.post(
        "/v1/responses", json={"input": "hello"}, headers={"Authorization": "Bearer ka"}
    )
    assert r.status == 200
    for key in ("ka", "kb"):
        r = await client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
        assert r.status == 403, key
        assert "--metrics-key" in (await r.json())["error"]["message"]
