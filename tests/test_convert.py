"""The ctransformers model converter (`_core.convert_for_ctransformers`) and its cache
(`threadloom.convert.prepared_model`): the real default model, reruns, cache reuse, loading in
ctransformers' 2023 llama.cpp, and refusal of files that loader cannot take.

Loading a file in ctransformers happens in a subprocess: a bad file can crash that process."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from threadloom import _core
from threadloom.convert import (
    CONVERTED_NAME,
    CONVERTER_VERSION,
    default_cache_dir,
    file_sha256,
    prepared_model,
)
from threadloom.errors import InvalidInput, ModelNotInstalled
from threadloom.models import default_model_path

HAVE_CTRANSFORMERS = importlib.util.find_spec("ctransformers") is not None


@pytest.fixture(scope="module")
def default_model() -> Path:
    try:
        return default_model_path()
    except ModelNotInstalled as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def converted(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "model-ct.gguf"
    _core.convert_for_ctransformers(default_model, out)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- a tiny GGUF writer, for synthetic models -------------------------------------------------

U32, I32, F32, STRING, ARRAY = 4, 5, 6, 8, 9


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _value(kind: int, value: Any) -> bytes:
    if kind == U32:
        return struct.pack("<I", value)
    if kind == I32:
        return struct.pack("<i", value)
    if kind == F32:
        return struct.pack("<f", value)
    if kind == STRING:
        return _str(value)
    elem, items = value
    return struct.pack("<IQ", elem, len(items)) + b"".join(_value(elem, v) for v in items)


# ggml type -> (block elements, block bytes)
BLOCKS = {0: (1, 4), 1: (1, 2), 8: (32, 34), 20: (32, 18), 30: (1, 2)}


def gguf(kv: dict[str, tuple[int, Any]], tensors: list[tuple[str, list[int], int, bytes]]) -> bytes:
    """A GGUF v3 image; each tensor is (name, dims, ggml type, data)."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for key, (kind, value) in kv.items():
        head += _str(key) + struct.pack("<I", kind) + _value(kind, value)
    offset, blobs = 0, []
    for name, dims, kind, data in tensors:
        offset = -(-offset // 32) * 32
        head += _str(name) + struct.pack("<I", len(dims))
        head += b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", kind, offset)
        blobs.append((offset, data))
        offset += len(data)
    head += b"\0" * (-len(head) % 32)
    body = bytearray()
    for off, data in blobs:
        body += b"\0" * (off - len(body)) + data
    return head + bytes(body)


TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "\u010a", "\u0120", "a", "b",
          "\u0120a", "ab", "\u00c3\u00a9", "\u0120\u0120", "c", "d", "e", "f", "g"]  # fmt: skip
N_EMBD, N_FF, N_LAYER = 32, 64, 2


def f32_data(n: int, value: float | None = None, seed: int = 0) -> bytes:
    vals = [value if value is not None else ((i * 37 + seed * 11) % 17 - 8) / 64 for i in range(n)]
    return struct.pack(f"<{n}f", *vals)


def tiny_kv(**changes: tuple[int, Any] | None) -> dict[str, tuple[int, Any]]:
    types = [3, 3, 3] + [1] * (len(TOKENS) - 3)
    kv: dict[str, tuple[int, Any]] = {
        "general.architecture": (STRING, "llama"),
        "general.name": (STRING, "tiny"),
        "llama.block_count": (U32, N_LAYER),
        "llama.context_length": (U32, 128),
        "llama.embedding_length": (U32, N_EMBD),
        "llama.feed_forward_length": (U32, N_FF),
        "llama.attention.head_count": (U32, 4),
        "llama.attention.head_count_kv": (U32, 2),
        "llama.rope.dimension_count": (U32, 8),
        "llama.attention.layer_norm_rms_epsilon": (F32, 1e-5),
        "tokenizer.ggml.model": (STRING, "gpt2"),
        "tokenizer.ggml.tokens": (ARRAY, (STRING, TOKENS)),
        "tokenizer.ggml.token_type": (ARRAY, (I32, types)),
        "tokenizer.ggml.merges": (ARRAY, (STRING, ["\u0120 a", "a b", "\u00c3 \u00a9"])),
        "tokenizer.ggml.bos_token_id": (U32, 1),
        "tokenizer.ggml.eos_token_id": (U32, 2),
    }
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            kv.pop(key, None)
        else:
            kv[key] = value
    return kv


def tiny_tensors() -> list[tuple[str, list[int], int, bytes]]:
    v = len(TOKENS)
    out = [
        ("token_embd.weight", [N_EMBD, v], 0, f32_data(N_EMBD * v, seed=1)),
        ("output_norm.weight", [N_EMBD], 0, f32_data(N_EMBD, 1.0)),
    ]
    for i in range(N_LAYER):
        shapes = {
            "attn_norm": [N_EMBD], "ffn_norm": [N_EMBD],
            "attn_q": [N_EMBD, N_EMBD], "attn_k": [N_EMBD, N_EMBD // 2],
            "attn_v": [N_EMBD, N_EMBD // 2], "attn_output": [N_EMBD, N_EMBD],
            "ffn_gate": [N_EMBD, N_FF], "ffn_down": [N_FF, N_EMBD], "ffn_up": [N_EMBD, N_FF],
        }  # fmt: skip
        for j, (name, dims) in enumerate(shapes.items()):
            n = dims[0] * (dims[1] if len(dims) > 1 else 1)
            value = 1.0 if name.endswith("norm") else None
            out.append((f"blk.{i}.{name}.weight", dims, 0, f32_data(n, value, seed=i * 10 + j)))
    return out


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def run_in_subprocess(
    code: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- the real default model --------------------------------------------------------------------


def test_converts_the_default_model(default_model: Path, converted: Path) -> None:
    data = converted.read_bytes()
    assert data[:8] == b"GGUF\x02\x00\x00\x00"
    # Another run, through the progress callback, writes the same bytes.
    calls: list[tuple[int, int]] = []
    again = converted.with_name("again.gguf")
    report = _core.convert_for_ctransformers(
        default_model, again, lambda done, total: calls.append((done, total))
    )
    assert again.read_bytes() == data
    assert report["output_bytes"] == len(data)
    assert report["source_version"] == 3 and report["output_version"] == 2
    assert report["converter_version"] == CONVERTER_VERSION
    assert report["tokenizer_model"] == "gpt2" and report["n_vocab"] == 49152
    assert report["added_scores"] and report["added_output_weight"]
    assert not report["vocab_already_raw"]
    assert report["tokens_rewritten"] > 30_000 and report["merges_rewritten"] > 0
    assert report["normalized_keys"] == []
    assert report["added_keys"] == ["tokenizer.ggml.scores"]
    total = report["tensor_bytes"]
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert len(calls) <= 102
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    # Tensor data is copied unchanged: the source's data section (98 MB) is inside the output,
    # and output.weight (a copy of token_embd.weight) makes up the rest.
    assert report["tensor_bytes"] > default_model.stat().st_size * 0.9


def test_converting_a_converted_file_changes_nothing(converted: Path, tmp_path: Path) -> None:
    out = tmp_path / "twice.gguf"
    report = _core.convert_for_ctransformers(converted, out)
    assert report["vocab_already_raw"]
    assert not report["added_scores"] and not report["added_output_weight"]
    assert out.read_bytes() == converted.read_bytes()


def test_progress_exception_stops_the_conversion(default_model: Path, tmp_path: Path) -> None:
    def stop(done: int, total: int) -> None:
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _core.convert_for_ctransformers(default_model, tmp_path / "out.gguf", stop)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not HAVE_CTRANSFORMERS, reason="ctransformers is not installed")
def test_ctransformers_loads_it_and_answers(default_model: Path, converted: Path) -> None:
    proc = run_in_subprocess(
        """
        import json, sys
        from threadloom import Tokenizer
        from ctransformers import AutoModelForCausalLM
        original, converted = sys.argv[1], sys.argv[2]
        tok = Tokenizer.from_gguf(original)
        prompt = ("<|im_start|>user\\nWhat is the capital of France?<|im_end|>\\n"
                  "<|im_start|>assistant\\n")
        ids = tok.encode(prompt)
        llm = AutoModelForCausalLM.from_pretrained(
            converted, model_type="llama", context_length=2048, lib="avx2")
        out = []
        for t in llm.generate(ids, top_k=1, temperature=0.1):
            if t == 2 or len(out) >= 32:
                break
            out.append(t)
        print(json.dumps({"text": tok.decode(out), "ct_text": llm.detokenize(out),
                          "newline": llm.detokenize(tok.encode("\\n"))}))
        """,
        str(default_model),
        str(converted),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "Paris" in result["text"], result
    # The old detokenizer reads the raw-byte vocabulary correctly.
    assert result["ct_text"] == result["text"]
    assert result["newline"] == "\n"


@pytest.mark.skipif(not HAVE_CTRANSFORMERS, reason="ctransformers is not installed")
def test_the_original_file_is_what_needed_converting(default_model: Path) -> None:
    """Guards the premise: the 2023 loader fails (or crashes) on the unconverted file."""
    proc = run_in_subprocess(
        """
        import sys
        from ctransformers import AutoModelForCausalLM
        AutoModelForCausalLM.from_pretrained(sys.argv[1], model_type="llama", lib="avx2")
        """,
        str(default_model),
    )
    assert proc.returncode != 0


# --- the cache ---------------------------------------------------------------------------------


def test_prepared_model_converts_once_and_reuses(
    default_model: Path, converted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    path = prepared_model(default_model, cache, progress=False)
    assert path.name == CONVERTED_NAME
    assert path.parent.parent == cache
    assert path.parent.name == f"{file_sha256(default_model)}-ct{CONVERTER_VERSION}"
    assert path.read_bytes() == converted.read_bytes()
    before = path.stat()

    # The second call neither rewrites the file nor hashes the source again.
    def no_hashing(*args: object, **kwargs: object) -> str:
        raise AssertionError("the source was hashed again")

    monkeypatch.setattr("threadloom.convert.file_sha256", no_hashing)
    monkeypatch.setattr(_core, "convert_for_ctransformers", no_hashing)
    again = prepared_model(default_model, cache, progress=False)
    after = again.stat()
    assert again == path
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in path.parent.iterdir()] == [CONVERTED_NAME]


def test_cache_key_follows_the_contents(tmp_path: Path) -> None:
    src = write(tmp_path / "m.gguf", gguf(tiny_kv(), tiny_tensors()))
    cache = tmp_path / "cache"
    first = prepared_model(src, cache, progress=False)
    # Same path, different contents (and mtime): a new key, a new conversion.
    write(src, gguf(tiny_kv(general__name=(STRING, "other")), tiny_tensors()))
    os.utime(src, ns=(1, 1))
    second = prepared_model(src, cache, progress=False)
    assert second != first and second.is_file() and first.is_file()
    # A copy of the first file elsewhere maps to the first conversion.
    copy = write(tmp_path / "copy.gguf", gguf(tiny_kv(), tiny_tensors()))
    assert prepared_model(copy, cache, progress=False) == first


def test_prepared_model_draws_a_progress_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(tmp_path / "m.gguf", gguf(tiny_kv(), tiny_tensors()))
    prepared_model(src, tmp_path / "cache", progress=True)
    err = capsys.readouterr().err
    assert "preparing m.gguf for ctransformers" in err and "100%" in err
    assert err.endswith("\n")
    prepared_model(src, tmp_path / "cache", progress=True)
    assert capsys.readouterr().err == ""


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("THREADLOOM_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("THREADLOOM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "threadloom"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "threadloom"


def test_two_processes_preparing_at_once(
    default_model: Path, converted: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    code = (
        "import sys; from threadloom.convert import prepared_model; "
        "print(prepared_model(sys.argv[1], sys.argv[2], progress=False))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(default_model), str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1
    path = Path(paths.pop())
    assert sha256(path) == sha256(converted)
    leftovers = [p.name for p in cache.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


# --- synthetic models ----------------------------------------------------------------------------


def test_tiny_model_converts(tmp_path: Path) -> None:
    src = write(tmp_path / "tiny.gguf", gguf(tiny_kv(), tiny_tensors()))
    out = tmp_path / "out.gguf"
    report = _core.convert_for_ctransformers(src, out)
    assert report["n_tensors"] == len(tiny_tensors()) + 1
    assert report["tokens_rewritten"] == 5  # Ċ, Ġ, Ġa, Ã©, ĠĠ
    assert report["merges_rewritten"] == 1  # "Ã ©"
    data = out.read_bytes()
    # Raw-byte tokens: newline, space, " a", "é"; the merge of é's two bytes is raw too.
    for raw in [_str(b"\n"), _str(b" a"), _str("é"), _str(b"\xc3 \xa9")]:
        assert raw in data
    assert _str("\u0120 a") in data  # merges keep Ġ for space
    # Unchanged tensor data.
    for _, _, _, blob in tiny_tensors():
        assert blob in data


@pytest.mark.skipif(not HAVE_CTRANSFORMERS, reason="ctransformers is not installed")
def test_ctransformers_runs_a_converted_tiny_model(tmp_path: Path) -> None:
    src = write(tmp_path / "tiny.gguf", gguf(tiny_kv(), tiny_tensors()))
    out = tmp_path / "out.gguf"
    _core.convert_for_ctransformers(src, out)
    proc = run_in_subprocess(
        """
        import json, sys
        from ctransformers import AutoModelForCausalLM
        llm = AutoModelForCausalLM.from_pretrained(sys.argv[1], model_type="llama", lib="avx2")
        ids = []
        for t in llm.generate([1, 5, 6], top_k=1):
            ids.append(t)
            if len(ids) == 4:
                break
        print(json.dumps({"ids": ids, "vocab": llm.vocab_size,
                          "text": [llm.detokenize([i]) for i in (3, 7, 9)]}))
        """,
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["vocab"] == len(TOKENS)
    assert all(0 <= i < len(TOKENS) for i in result["ids"])
    assert result["text"] == ["\n", " a", "é"]


def refusal(tmp_path: Path, data: bytes) -> str:
    src = write(tmp_path / "bad.gguf", data)
    out = tmp_path / "out.gguf"
    with pytest.raises(InvalidInput) as info:
        _core.convert_for_ctransformers(src, out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.gguf"]
    message = str(info.value)
    assert "bad.gguf" in message
    return message


def test_refuses_another_architecture(tmp_path: Path) -> None:
    kv = tiny_kv(general__architecture=(STRING, "qwen2"))
    message = refusal(tmp_path, gguf(kv, tiny_tensors()))
    assert "architecture 'qwen2' is not supported (only 'llama' is converted)" in message


def test_refuses_another_tokenizer(tmp_path: Path) -> None:
    kv = tiny_kv(tokenizer__ggml__model=(STRING, "t5"))
    assert "tokenizer 't5' is not supported" in refusal(tmp_path, gguf(kv, tiny_tensors()))


def test_refuses_newer_tensor_types(tmp_path: Path) -> None:
    tensors = tiny_tensors()
    index = {t[0]: i for i, t in enumerate(tensors)}
    q, k = index["blk.0.attn_q.weight"], index["blk.0.attn_k.weight"]
    name, dims, _, _ = tensors[q]
    tensors[q] = (name, dims, 20, b"\0" * (dims[0] * dims[1] // 32 * 18))  # IQ4_NL
    name, dims, _, _ = tensors[k]
    tensors[k] = (name, dims, 30, b"\0" * (dims[0] * dims[1] * 2))  # BF16
    message = refusal(tmp_path, gguf(tiny_kv(), tensors))
    assert "tensor type IQ4_NL (ggml type 20) is newer than the 2023 llama.cpp" in message
    assert "blk.0.attn_q.weight" in message
    assert "BF16 (ggml type 30)" in message


def test_refuses_a_missing_tensor(tmp_path: Path) -> None:
    tensors = [t for t in tiny_tensors() if t[0] != "blk.1.ffn_down.weight"]
    message = refusal(tmp_path, gguf(tiny_kv(), tensors))
    assert "required tensors are missing: blk.1.ffn_down.weight" in message


def test_refuses_an_extra_tensor(tmp_path: Path) -> None:
    tensors = [*tiny_tensors(), ("rope_freqs.weight", [4], 0, f32_data(4, 1.0))]
    message = refusal(tmp_path, gguf(tiny_kv(), tensors))
    assert "rope_freqs.weight" in message and "extra tensors" in message


def test_refuses_missing_hyperparameters(tmp_path: Path) -> None:
    kv = tiny_kv(llama__feed_forward_length=None)
    message = refusal(tmp_path, gguf(kv, tiny_tensors()))
    assert "key 'llama.feed_forward_length' is missing" in message


def test_refuses_a_vocabulary_without_newline(tmp_path: Path) -> None:
    tokens = [t if t != "\u010a" else "x" for t in TOKENS]
    kv = tiny_kv(tokenizer__ggml__tokens=(ARRAY, (STRING, tokens)))
    assert "no newline token" in refusal(tmp_path, gguf(kv, tiny_tensors()))


def test_refuses_a_truncated_file(tmp_path: Path) -> None:
    data = gguf(tiny_kv(), tiny_tensors())
    message = refusal(tmp_path, data[:-100])
    assert "file truncated" in message
    message = refusal(tmp_path, data[:60])
    assert "GGUF" in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "the file is empty"),
        (b"PK\x03\x04 this is a zip file, not a model", "not a GGUF file"),
        (b"GGUF\x07\x00\x00\x00" + b"\0" * 32, "unsupported version 7"),
    ],
)
def test_refuses_files_that_are_not_gguf(tmp_path: Path, data: bytes, expected: str) -> None:
    assert expected in refusal(tmp_path, data)


def test_prepared_model_refuses_before_writing(tmp_path: Path) -> None:
    src = write(tmp_path / "q.gguf", gguf(tiny_kv(general__architecture=(STRING, "qwen2")), []))
    cache = tmp_path / "cache"
    with pytest.raises(InvalidInput, match="architecture 'qwen2'"):
        prepared_model(src, cache, progress=False)
    assert list(cache.rglob(CONVERTED_NAME)) == []
    with pytest.raises(InvalidInput, match="model file not found"):
        prepared_model(tmp_path / "missing.gguf", cache, progress=False)


def test_stale_temporaries_are_cleaned_up(tmp_path: Path) -> None:
    src = write(tmp_path / "m.gguf", gguf(tiny_kv(), tiny_tensors()))
    cache = tmp_path / "cache"
    key_dir = cache / f"{file_sha256(src)}-ct{CONVERTER_VERSION}"
    key_dir.mkdir(parents=True)
    stale = write(key_dir / f".{CONVERTED_NAME}.999-0-1.tmp", b"half a model")
    fresh = write(key_dir / f".{CONVERTED_NAME}.998-0-1.tmp", b"being written now")
    os.utime(stale, (1, 1))
    path = prepared_model(src, cache, progress=False)
    assert path.is_file() and fresh.exists() and not stale.exists()
