"""The `threadloom` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from threadloom import ResponseInfo, ThreadloomError
from threadloom.storage import ConversationStore, close_store, describe, open_store


def _open(args: argparse.Namespace) -> ConversationStore:
    return open_store(args.store)


def _demo(args: argparse.Namespace) -> int:
    """A small batch job: a thread, a second turn, and a branch from the first response."""
    store = _open(args)
    thread = store.create_thread(metadata={"source": "threadloom demo"})
    first = store.append(
        [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "My favourite colour is blue."},
            {"role": "assistant", "content": "Noted: blue."},
        ],
        thread=thread.id,
        response=ResponseInfo("demo"),
    )
    store.append(
        [
            {"role": "user", "content": "What is my favourite colour?"},
            {"role": "assistant", "content": "Blue."},
        ],
        thread=thread.id,
        response=ResponseInfo("demo"),
    )
    assert first.response is not None
    branch = store.append(
        [
            {"role": "user", "content": "Actually, it is green."},
            {"role": "assistant", "content": "Noted: green."},
        ],
        previous_response_id=first.response.id,
        response=ResponseInfo("demo"),
    )
    assert branch.response is not None
    print(f"store: {describe(args.store)}")
    for title, turns in (
        (f"thread {thread.id}", store.history(thread=thread.id)),
        (f"branch {branch.response.id}", store.history(response=branch.response.id)),
    ):
        print(f"\n{title}")
        for turn in turns:
            print(f"  {turn.role:>9}: {turn.content}")
    print("\n" + json.dumps(store.stats()))
    close_store(store)
    return 0


def _stats(args: argparse.Namespace) -> int:
    store = _open(args)
    print(json.dumps(store.stats()))
    close_store(store)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    store = _open(args)
    print(json.dumps(store.sweep()))
    close_store(store)
    return 0


def _check(args: argparse.Namespace) -> int:
    store = _open(args)
    store.verify()
    close_store(store)
    print("ok")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from threadloom.server.app import run
    from threadloom.server.config import ConfigError, from_sources

    try:
        config = from_sources(args)
    except ConfigError as e:
        print(f"threadloom serve: {e}", file=sys.stderr)
        return 2
    run(config)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threadloom", description="Stateful, branching conversations for local LLMs."
    )
    from threadloom import __version__

    parser.add_argument("--version", action="version", version=f"threadloom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = (
        ("demo", _demo, "store a small branching conversation and print it"),
        ("stats", _stats, "print the store's counts and sizes"),
        ("sweep", _sweep, "delete expired threads and responses"),
        ("check", _check, "verify the store's internal consistency"),
    )
    for name, func, help_text in commands:
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument(
            "--store",
            default="./threadloom-data",
            help="LMDB store directory or postgresql:// URL",
        )
        cmd.set_defaults(func=func)
    serve = sub.add_parser("serve", help="run the HTTP server")
    from threadloom.server.config import add_arguments

    add_arguments(serve)
    serve.set_defaults(func=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ThreadloomError as e:
        print(f"threadloom: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
