"""Prompt assembly and token counting benchmarks (issue 4), side by side in one run.

1. Assembling the prompt of a stored thread of 10, 100 and 1,000 turns (one stored message is
   one turn; the first is the system prompt) plus one new user message, trimmed to the model's
   context with strategy "tokens":
   - threadloom: ``PromptEngine.assemble`` (read from the LMDB store, render the model's chat
     template, count, trim, tokenize), as Python sees it (the ids list included);
   - pure Python doing the same work: rows from SQLite (with a token-count column, so each turn
     is counted once, as threadloom caches counts in its store) -> ``jinja2`` render of the
     model's own chat template (read from the GGUF) -> Hugging Face ``tokenizers`` encode (the
     tokenizer built from the GGUF vocabulary) -> token-budget trim.
   Each request adds a different new message, so the newest part of every prompt is new text.
   "first" is the first assembly of the thread (every turn counted), "median" the steady state.
2. Batch token counting throughput on the same texts: threadloom ``Tokenizer.count_batch`` vs
   ``tiktoken`` (cl100k_base, only if its file is already cached on this machine: this script
   never downloads) and an offline ``tiktoken`` encoding built from the model's own vocabulary,
   vs Hugging Face ``tokenizers`` ``encode_batch``.

Usage: python benches/bench_prompt.py [--quick] [--model PATH]
Needs the bench extra: pip install -e '.[bench]' (tokenizers, jinja2, tiktoken).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import threadloom
from threadloom.models import default_model_path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gguf_meta import read_metadata

MAX_TOKENS = 256
SYSTEM = "You are a careful assistant. Answer briefly and cite the turn you rely on."

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "there",
    "been",
    "one",
    "all",
    "we",
    "their",
    "has",
    "would",
    "when",
    "if",
    "so",
    "no",
    "will",
    "model",
    "token",
    "prompt",
    "thread",
    "branch",
    "store",
    "cache",
    "budget",
    "context",
    "window",
    "summary",
    "stream",
    "server",
    "réseau",
    "naïve",
    "café",
    "über",
    "straße",
    "東京",
    "数据",
    "模型",
    "привет",
    "мир",
    "émoji",
    "🙂",
    "🚀",
    "1,024",
    "3.14",
    "2026-11-22",
]
CODE = [
    "def f(x):\n    return x * 2\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    "SELECT id, name FROM users WHERE age > 30;\n",
    '{"key": [1, 2, 3], "ok": true}\n',
]


def message(rng: random.Random, i: int) -> str:
    """A varied message of 15 to 120 words, sometimes with code or extra whitespace."""
    n = rng.randint(15, 120)
    words = [rng.choice(WORDS) for _ in range(n)]
    text = f"[{i}] " + " ".join(words)
    if rng.random() < 0.2:
        text += "\n\n" + rng.choice(CODE)
    if rng.random() < 0.1:
        text += "\n  - item one\n  - item two\n"
    return text


def conversation(n_turns: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    msgs = [{"role": "system", "content": SYSTEM}]
    for i in range(1, n_turns):
        msgs.append({"role": "user" if i % 2 else "assistant", "content": message(rng, i)})
    return msgs


# ---------------------------------------------------------------------------------------------
# The pure-Python pipeline.


def hf_tokenizer(meta: dict[str, Any]) -> Any:
    """The model's tokenizer in HF `tokenizers`, built from the GGUF vocabulary (as in
    /work/shared/reference/ctransformers-smollm2/recipe.py): BPE with the file's merges, digits
    split one by one, byte-level pre-tokenizer, control tokens matched as added tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    toks = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    types = meta["tokenizer.ggml.token_type"]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(toks)}, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([t for t, ty in zip(toks, types, strict=True) if ty == 3])
    return tok


def jinja_template(source: str) -> Any:
    """The template compiled the way Hugging Face `apply_chat_template` does."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, **kw: Any) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, **kw)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


class PythonPipeline:
    """SQLite rows -> jinja2 -> HF tokenizers -> trim, with per-turn counts cached in SQLite."""

    def __init__(self, db: Path, template: Any, tok: Any, context_length: int) -> None:
        self.con = sqlite3.connect(db)
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS turns (id INTEGER PRIMARY KEY, thread TEXT, seq INTEGER,"
            " role TEXT, content TEXT, tokens INTEGER)"
        )
        self.con.execute("CREATE INDEX IF NOT EXISTS by_thread ON turns (thread, seq)")
        self.template, self.tok, self.context_length = template, tok, context_length
        # Tokens one more message adds around its content, probed like threadloom does.
        one = self.count(self.render([{"role": "user", "content": ""}]))
        two = self.count(
            self.render([{"role": "user", "content": ""}, {"role": "assistant", "content": ""}])
        )
        self.overhead = two - one

    def add_thread(self, thread: str, msgs: list[dict[str, str]]) -> None:
        self.con.executemany(
            "INSERT INTO turns (thread, seq, role, content) VALUES (?, ?, ?, ?)",
            [(thread, i, m["role"], m["content"]) for i, m in enumerate(msgs)],
        )
        self.con.commit()

    def render(self, msgs: list[dict[str, str]]) -> str:
        out: str = self.template.render(
            messages=msgs, add_generation_prompt=True, bos_token="", eos_token="<|im_end|>"
        )
        return out

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False).ids)

    def assemble(self, thread: str, new: list[dict[str, str]]) -> tuple[str, list[int], int]:
        rows = self.con.execute(
            "SELECT id, role, content, tokens FROM turns WHERE thread = ? ORDER BY seq", (thread,)
        ).fetchall()
        missing = [r for r in rows if r[3] is None]
        if missing:
            encs = self.tok.encode_batch([r[2] for r in missing], add_special_tokens=False)
            counts = {r[0]: len(e.ids) for r, e in zip(missing, encs, strict=True)}
            self.con.executemany(
                "UPDATE turns SET tokens = ? WHERE id = ?", [(n, i) for i, n in counts.items()]
            )
            self.con.commit()
            rows = [(i, role, c, counts.get(i, n)) for i, role, c, n in rows]
        msgs = [{"role": r[1], "content": r[2]} for r in rows]
        new_counts = [
            len(e.ids)
            for e in self.tok.encode_batch([m["content"] for m in new], add_special_tokens=False)
        ]
        budget = self.context_length - MAX_TOKENS
        # Keep system messages, the new messages, and the newest history that fits.
        used = sum(n + self.overhead for n in new_counts)
        used += sum(r[3] + self.overhead for r in rows if r[1] == "system")
        keep = [r[1] == "system" for r in rows]
        for i in range(len(rows) - 1, -1, -1):
            if rows[i][1] == "system":
                continue
            cost = rows[i][3] + self.overhead
            if used + cost > budget:
                break
            keep[i] = True
            used += cost
        while True:
            kept = [m for m, k in zip(msgs, keep, strict=True) if k]
            # Never start the history with an assistant turn.
            first = next((j for j, m in enumerate(kept) if m["role"] != "system"), None)
            if first is not None and kept[first]["role"] == "assistant":
                keep[msgs.index(kept[first])] = False
                continue
            prompt = self.render(kept + new)
            ids: list[int] = self.tok.encode(prompt, add_special_tokens=False).ids
            if len(ids) <= budget:
                return prompt, ids, len(kept) + len(new)
            # The estimate was short: drop the oldest kept non-system message and retry.
            oldest = next(
                j
                for j, (m, k) in enumerate(zip(msgs, keep, strict=True))
                if k and m["role"] != "system"
            )
            keep[oldest] = False


# ---------------------------------------------------------------------------------------------
# Timing.


def timed(f: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = f()
    return time.perf_counter() - t0, out


def median_of(f: Callable[[int], Any], reps: int) -> float:
    xs = []
    for k in range(reps):
        t0 = time.perf_counter()
        f(k)
        xs.append(time.perf_counter() - t0)
    return statistics.median(xs)


def ms(x: float) -> str:
    return f"{x * 1e3:9.3f}"


def bench_assemble(
    engine: threadloom.PromptEngine, meta: dict[str, Any], tok: Any, sizes: list[int], reps: int
) -> None:
    template = jinja_template(meta["tokenizer.chat_template"])
    with tempfile.TemporaryDirectory() as d:
        store = threadloom.Store(Path(d) / "store")
        py = PythonPipeline(Path(d) / "turns.sqlite", template, tok, engine.context_length)
        print(
            f"\n== assemble: stored thread + 1 new message, strategy='tokens', context "
            f"{engine.context_length}, max_tokens {MAX_TOKENS} (times in ms) =="
        )
        header = (
            f"{'turns':>6} {'kept':>5} {'tokens':>6} | {'threadloom':>9} {'python':>9} "
            f"{'ratio':>7} | {'tl first':>9} {'py first':>9} {'ratio':>7}"
        )
        print(header)
        print("-" * len(header))
        for n in sizes:
            msgs = conversation(n, seed=n)
            thread = store.create_thread()
            for i in range(0, len(msgs), 100):
                store.append(msgs[i : i + 100], thread=thread.id)
            py.add_thread(thread.id, msgs)

            def new(k: int) -> list[dict[str, str]]:
                return [{"role": "user", "content": f"Follow-up question number {k}: and then?"}]

            tid = thread.id

            def tl(k: int, tid: str = tid) -> Any:
                a = engine.assemble(
                    store, new(k), thread=tid, strategy="tokens", max_tokens=MAX_TOKENS
                )
                return a, a.ids

            def pya(k: int, tid: str = tid) -> Any:
                return py.assemble(tid, new(k))

            tl_first, (a, ids) = timed(lambda: tl(10**6))
            py_first, (_p_prompt, p_ids, p_kept) = timed(lambda: pya(10**6))
            # Interleaved repeats, so both see the same machine load.
            tl_times, py_times = [], []
            for k in range(reps):
                tl_times.append(timed(lambda k=k: tl(k))[0])
                py_times.append(timed(lambda k=k: pya(k))[0])
            tl_med, py_med = statistics.median(tl_times), statistics.median(py_times)
            # Sanity: HF's ids for threadloom's prompt are threadloom's ids.
            same = tok.encode(a.prompt, add_special_tokens=False).ids == ids
            print(
                f"{n:>6} {a.messages_kept:>5} {len(ids):>6} | {ms(tl_med)} {ms(py_med)} "
                f"{py_med / tl_med:>6.1f}x | {ms(tl_first)} {ms(py_first)} "
                f"{py_first / tl_first:>6.1f}x"
                + ("" if same else "   (HF ids differ from threadloom's!)")
            )
            if n == sizes[-1]:
                print(
                    f"   python kept {p_kept} messages, {len(p_ids)} tokens; threadloom trims in "
                    "blocks (hysteresis) so consecutive prompts share a prefix"
                )


# ---------------------------------------------------------------------------------------------
# Batch counting throughput.


def cached_tiktoken_file(url: str) -> Path | None:
    """Where tiktoken would have cached `url`, if it has (checked without tiktoken, which would
    download the file when it is missing)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            cache = Path(os.environ[var])
            break
    else:
        cache = Path(tempfile.gettempdir()) / "data-gym-cache"
    path = cache / hashlib.sha1(url.encode()).hexdigest()
    return path if path.is_file() else None


def tiktoken_from_gguf(meta: dict[str, Any]) -> Any:
    """A tiktoken encoding with the model's own vocabulary, built offline: each token's bytes
    ranked by the merge that makes it (single bytes first), the model's split pattern (digits
    alone, then GPT-2's), its control tokens as specials."""
    import tiktoken

    table: dict[str, int] = {}
    n = 0
    for b in range(256):
        printable = 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF
        table[chr(b) if printable else chr(256 + n)] = b
        n += 0 if printable else 1

    def raw(text: str) -> bytes:
        return bytes(table[c] for c in text)

    toks, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    ranks: dict[bytes, int] = {bytes([b]): b for b in range(256)}
    for m in meta["tokenizer.ggml.merges"]:
        a, b = m.split(" ", 1)
        ranks.setdefault(raw(a) + raw(b), len(ranks))
    specials = {t: i for i, (t, ty) in enumerate(zip(toks, types, strict=True)) if ty == 3}
    pattern = r"\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
    return tiktoken.Encoding(
        "smollm2-local", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials
    )


def bench_counting(
    tokenizer: threadloom.Tokenizer, meta: dict[str, Any], tok: Any, reps: int
) -> None:
    golden = json.loads(
        (Path(__file__).resolve().parent.parent / "tests/fixtures/tokens_smollm2.json").read_text()
    )
    texts = [c["text"] for c in golden["cases"]] + [m["content"] for m in conversation(3000, 7)]
    n_bytes = sum(len(t.encode()) for t in texts)
    print(
        f"\n== batch token counting: {len(texts)} texts, {n_bytes / 1e6:.2f} MB (golden corpus + "
        f"chat messages), {os.cpu_count()} CPUs =="
    )
    rows: list[tuple[str, Callable[[], int]]] = [
        ("threadloom Tokenizer.count_batch", lambda: sum(tokenizer.count_batch(texts))),
        (
            "HF tokenizers encode_batch",
            lambda: sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)),
        ),
    ]
    notes = []
    try:
        import tiktoken

        cl100k_url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
        if cached_tiktoken_file(cl100k_url) is not None:
            cl = tiktoken.get_encoding("cl100k_base")
            rows.append(
                (
                    "tiktoken cl100k_base encode_batch",
                    lambda: sum(map(len, cl.encode_batch(texts, allowed_special="all"))),
                )
            )
        else:
            notes.append(
                "tiktoken cl100k_base: skipped, its vocabulary file is not on this machine and "
                "tiktoken would download it (not allowed here)"
            )
        local = tiktoken_from_gguf(meta)
        rows.append(
            (
                "tiktoken, model vocab (offline)",
                lambda: sum(map(len, local.encode_batch(texts, allowed_special="all"))),
            )
        )
    except ImportError:
        notes.append("tiktoken: not installed (pip install -e '.[bench]')")

    header = f"{'':36} {'tokens':>9} {'first ms':>9} {'median ms':>9} {'Mtok/s':>7} {'vs tl':>6}"
    print(header)
    print("-" * len(header))
    base = None
    for name, f in rows:
        first, n = timed(f)
        med = median_of(lambda _k, f=f: f(), reps)
        rate = n / med
        base = base or rate
        print(f"{name:36} {n:>9} {ms(first)} {ms(med)} {rate / 1e6:>7.2f} {rate / base:>5.2f}x")
    for note in notes:
        print("  " + note)
    # Single long text, one thread: the tokenizer itself without batching.
    prompt = "".join(f"<|im_start|>user\n{t}<|im_end|>\n" for t in texts[:2200])
    n = tokenizer.count(prompt)
    tl = median_of(lambda _k: tokenizer.count(prompt), reps)
    hf = median_of(lambda _k: tok.encode(prompt, add_special_tokens=False), reps)
    print(
        f"one {len(prompt.encode()) / 1e3:.0f} KB ChatML prompt ({n} tokens), one thread: "
        f"threadloom count {tl * 1e3:.2f} ms ({n / tl / 1e6:.2f} Mtok/s), "
        f"HF encode {hf * 1e3:.2f} ms ({n / hf / 1e6:.2f} Mtok/s)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--model", type=Path, default=None, help="GGUF file (default: SmolLM2)")
    args = ap.parse_args()
    path = args.model or default_model_path()
    reps = 5 if args.quick else 25

    meta = read_metadata(path)
    tok = hf_tokenizer(meta)
    engine = threadloom.PromptEngine.from_gguf(path)
    print(f"model: {Path(path).name}; threadloom {threadloom.__version__}")
    bench_assemble(engine, meta, tok, [10, 100, 1000], reps)
    bench_counting(engine.tokenizer, meta, tok, 3 if args.quick else 7)


if __name__ == "__main__":
    main()
