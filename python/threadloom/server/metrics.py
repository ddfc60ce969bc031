"""`GET /metrics` in the Prometheus text exposition format (version 0.0.4), hand-written: three
metric kinds with fixed label sets do not justify a dependency.

What is exported:

- `threadloom_http_requests_total{method,route,status}`: every request the app answered.
- `threadloom_http_request_duration_seconds{method,route}`: a histogram of the time until the
  handler returned; for a stream that is the whole stream.
- `threadloom_prompt_tokens_total{model}`, `threadloom_cached_prompt_tokens_total{model}`,
  `threadloom_generated_tokens_total{model}` and `threadloom_generations_total{model,status}`:
  from every engine's `on_finished` hook, so every dialect is counted without code of its own.
- `threadloom_queue_wait_seconds`, `threadloom_prompt_eval_seconds`,
  `threadloom_time_to_first_token_seconds` and `threadloom_decode_tokens_per_second`:
  histograms of each generation's scheduler timings, from the same hook.
- `threadloom_model_loaded{model}` (1 or 0) for every declared model; `threadloom_slots`,
  `threadloom_slots_busy`, `threadloom_queue_depth` and `threadloom_threads` by `model` for the
  loaded ones; `threadloom_store_*` gauges (one store for all models), read when scraped.
- With saved conversation states (llama-cpp): `threadloom_kv_states_{saved,restored,evicted,
  rejected}_total` counters and the `threadloom_kv_states` / `threadloom_kv_state_bytes` gauges,
  by `model` (the loaded ones; a model's counts start again when it is loaded again).

Labels stay bounded whatever clients send: `route` is the matched route's template
(`/v1/responses/{response_id}`), never the raw path, and "unmatched" for anything no route
matched; `method` is one of the HTTP methods the app knows, else "other".

Authentication: when API keys are configured, `/metrics` takes only the operator's key
(`--metrics-key`, `THREADLOOM_METRICS_KEY`; Prometheus sends it with `authorization:
{credentials: ...}`), never a tenant's: the store's sizes and the token counters sum every
tenant's work, so a tenant could watch another's. Without a metrics key it is refused (403)
while keys are configured. With no keys configured the server only listens on loopback, where
everything is open anyway.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast

from aiohttp import web

from threadloom.engine import Result
from threadloom.kvstate import StateCache
from threadloom.registry import LoadedModel

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# From a cached /health (milliseconds) to a long generation streamed to the end (minutes).
LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
# Decode speed per request, tokens per second: from a starved stream to a GPU's.
SPEED_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
# Not a real HTTP status: the client went away before the handler answered (nginx's code).
CLIENT_CLOSED = 499

STORE_HELP = {
    "threads": "Threads in the store.",
    "responses": "Responses in the store.",
    "turns": "Turns in the store.",
    "file_bytes": "Size of the store's data file in bytes.",
    "map_bytes": "Size of the store's memory map in bytes.",
}

Labels = tuple[str, ...]


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return str(value) if isinstance(value, int) else repr(value)


class Counter:
    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels = (), amount: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        if not self.values and not self.label_names:
            yield f"{self.name} 0"  # an unlabelled counter exists from the start
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {_num(value)}"


class Histogram:
    def __init__(
        self, name: str, help: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self.bounds = tuple(sorted(buckets))
        # Per label set: non-cumulative bucket counts (the last one is +Inf), sum.
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = ([0] * (len(self.bounds) + 1), [0.0])
        counts, total = series
        # `le` is inclusive: a value equal to a bound falls into that bound's bucket.
        counts[bisect.bisect_left(self.bounds, value)] += 1
        total[0] += value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, (counts, total) in sorted(self.series.items()):
            running = 0
            for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
                running += n
                le = _labels(self.label_names, labels, f'le="{_num(bound)}"')
                yield f"{self.name}_bucket{le} {running}"
            plain = _labels(self.label_names, labels)
            yield f"{self.name}_sum{plain} {_num(total[0])}"
            yield f"{self.name}_count{plain} {running}"


def _gauge(name: str, help: str, value: float) -> Iterable[str]:
    yield f"# HELP {name} {help}"
    yield f"# TYPE {name} gauge"
    yield f"{name} {_num(value)}"


def _by_model(
    kind: str, name: str, help: str, samples: Sequence[tuple[str, float]]
) -> Iterable[str]:
    """One metric family with a sample per model."""
    yield f"# HELP {name} {help}"
    yield f"# TYPE {name} {kind}"
    for model, value in samples:
        yield f"{name}{_labels(('model',), (model,))} {_num(value)}"


def _models(models: Sequence[LoadedModel]) -> Iterable[str]:
    yield from _by_model(
        "gauge",
        "threadloom_model_loaded",
        "Whether the declared model is loaded (1) or not (0).",
        [(m.name, int(m.engine is not None)) for m in models],
    )
    loaded = [(m.name, m.engine) for m in models if m.engine is not None]
    gauges = (
        ("threadloom_slots", "Generation slots.", lambda e: len(e.scheduler.slots)),
        ("threadloom_slots_busy", "Slots generating now.", lambda e: e.scheduler.busy),
        (
            "threadloom_queue_depth",
            "Requests waiting for a free slot.",
            lambda e: e.scheduler.waiting,
        ),
        ("threadloom_threads", "Compute thread budget.", lambda e: e.threads),
    )
    for name, help, read in gauges:
        yield from _by_model("gauge", name, help, [(m, read(e)) for m, e in loaded])
    states = [(m, e.scheduler.states) for m, e in loaded if e.scheduler.states is not None]
    if not states:
        return
    families: tuple[tuple[str, str, str, Callable[[StateCache], float]], ...] = (
        ("counter", "threadloom_kv_states_saved_total", "States saved.", lambda s: s.stats.saved),
        (
            "counter",
            "threadloom_kv_states_restored_total",
            "States restored.",
            lambda s: s.stats.restored,
        ),
        (
            "counter",
            "threadloom_kv_states_evicted_total",
            "States dropped for the budget.",
            lambda s: s.stats.evicted,
        ),
        (
            "counter",
            "threadloom_kv_states_rejected_total",
            "Damaged or refused states.",
            lambda s: s.stats.rejected,
        ),
        ("gauge", "threadloom_kv_states", "Saved conversation states.", len),
        ("gauge", "threadloom_kv_state_bytes", "Bytes of saved states.", lambda s: s.bytes_held),
    )
    for kind, name, help, read_state in families:
        yield from _by_model(kind, name, help, [(m, read_state(c)) for m, c in states])


class Metrics:
    """The app's metrics. Everything is updated on the event loop thread, so no locks."""

    def __init__(self) -> None:
        self.requests = Counter(
            "threadloom_http_requests_total",
            "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"),
        )
        self.latency = Histogram(
            "threadloom_http_request_duration_seconds",
            "Time until the handler returned (for streams: the whole stream), by route template.",
            ("method", "route"),
            LATENCY_BUCKETS,
        )
        self.prompt_tokens = Counter(
            "threadloom_prompt_tokens_total", "Prompt tokens of finished generations.", ("model",)
        )
        self.cached_tokens = Counter(
            "threadloom_cached_prompt_tokens_total",
            "Prompt tokens a slot already held, so the model did not evaluate them again.",
            ("model",),
        )
        self.generated_tokens = Counter(
            "threadloom_generated_tokens_total",
            "Tokens generated by finished generations.",
            ("model",),
        )
        self.generations = Counter(
            "threadloom_generations_total",
            "Finished generations, by model and status.",
            ("model", "status"),
        )
        self.queue_wait = Histogram(
            "threadloom_queue_wait_seconds",
            "Time a generation waited for a free slot.",
            (),
            LATENCY_BUCKETS,
        )
        self.prompt_eval = Histogram(
            "threadloom_prompt_eval_seconds",
            "Time from getting a slot to the end of prompt evaluation (chunks interleaved with "
            "other streams' decoding).",
            (),
            LATENCY_BUCKETS,
        )
        self.first_token = Histogram(
            "threadloom_time_to_first_token_seconds",
            "Time from the assembled prompt joining the queue to the first generated token.",
            (),
            LATENCY_BUCKETS,
        )
        self.decode_speed = Histogram(
            "threadloom_decode_tokens_per_second",
            "Per generation: output tokens after the first, per second.",
            (),
            SPEED_BUCKETS,
        )

    def record_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "other"
        self.requests.inc((method, route, str(status)))
        self.latency.observe((method, route), seconds)

    def record_generation(self, result: Result) -> None:
        usage = result.usage
        model = (result.model,)
        self.prompt_tokens.inc(model, amount=usage.prompt_tokens)
        self.cached_tokens.inc(model, amount=usage.cached_tokens)
        self.generated_tokens.inc(model, amount=usage.completion_tokens)
        self.generations.inc((result.model, result.status))
        if result.finish_reason == "cancelled" and result.time_to_first_token_s is None:
            return  # never got a slot's first step: it has no timings to speak of
        self.queue_wait.observe((), result.queue_s)
        self.prompt_eval.observe((), result.prompt_eval_s)
        if result.time_to_first_token_s is not None:
            self.first_token.observe((), result.time_to_first_token_s)
        if result.decode_tokens_per_s is not None:
            self.decode_speed.observe((), result.decode_tokens_per_s)

    def render(
        self, models: Sequence[LoadedModel], store_stats: Mapping[str, object] | None = None
    ) -> str:
        """The exposition text. `store_stats` is the store's `stats()`, which the caller reads
        off the event loop."""
        lines: list[str] = []
        for metric in (
            self.requests,
            self.latency,
            self.prompt_tokens,
            self.cached_tokens,
            self.generated_tokens,
            self.generations,
            self.queue_wait,
            self.prompt_eval,
            self.first_token,
            self.decode_speed,
        ):
            lines.extend(metric.render())
        lines.extend(_models(models))
        for key, value in sorted((store_stats or {}).items()):
            help = STORE_HELP.get(key, f"Store statistic {key}.")
            lines.extend(_gauge(f"threadloom_store_{key}", help, cast(int, value)))
        lines.append("")
        return "\n".join(lines)


def route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED
