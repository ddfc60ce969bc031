"""Model files prepared for ctransformers, kept in a cache.

ctransformers 0.2.27 runs an August-2023 llama.cpp that cannot load today's GGUF files as they
are; `threadloom._core.convert_for_ctransformers` (Rust) rewrites one into the form it takes.
`prepared_model` does that once per source file and keeps the result at
`<cache_dir>/<sha256 of the source>-ct<converter version>/model-ct.gguf`.

The cache key is the SHA-256 of the whole source file, so two different files can never share
a converted copy, whatever their names, sizes or timestamps. Hashing costs about 0.1 s for the
default 98 MB model but seconds for multi-gigabyte ones, so the digest is remembered per source
path together with the file's size, mtime, inode and device (`<cache_dir>/sources/*.json`): a
later start whose stat matches skips the hashing, and any change to the file (which moves its
mtime) leads to a fresh hash. Every cache file is written to a temporary name and renamed into
place, so two processes preparing the same model at once each rename a complete, identical file
and neither can see a partial one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from threadloom import _core
from threadloom.errors import InvalidInput

__all__ = [
    "CONVERTED_NAME",
    "CONVERTER_VERSION",
    "cache_key",
    "default_cache_dir",
    "file_sha256",
    "prepared_model",
]

#: Must equal the Rust converter's `CONVERTER_VERSION` (its report says which it is); bumping
#: it makes every cached conversion stale.
CONVERTER_VERSION = 1
CONVERTED_NAME = "model-ct.gguf"
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """`$THREADLOOM_CACHE_DIR`, else `$XDG_CACHE_HOME/threadloom`, else `~/.cache/threadloom`."""
    env = os.environ.get("THREADLOOM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "threadloom"


def file_sha256(path: Path, progress: Callable[[int, int], object] | None = None) -> str:
    """The SHA-256 of the file at `path`, read in 1 MiB chunks (hashlib releases the GIL)."""
    digest = hashlib.sha256()
    total = path.stat().st_size
    step = max(total // 100, _CHUNK)
    done, next_report = 0, 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
            done += n
            if progress is not None and done >= next_report:
                progress(done, total)
                next_report = done + step
    if progress is not None:
        progress(done, total)
    return digest.hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _stat_fingerprint(st: os.stat_result) -> dict[str, int]:
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ino": st.st_ino,
        "dev": st.st_dev,
    }


def cache_key(
    src: Path, cache_dir: Path, progress: Callable[[int, int], object] | None = None
) -> str:
    """The cache directory name for `src`: its SHA-256 and the converter version. The digest is
    remembered under `cache_dir/sources/` for as long as the file's stat is unchanged."""
    resolved = src.resolve()
    memo = (
        cache_dir / "sources" / (hashlib.sha256(os.fsencode(resolved)).hexdigest()[:32] + ".json")
    )
    fingerprint = _stat_fingerprint(resolved.stat())
    digest: str | None = None
    try:
        saved = json.loads(memo.read_text())
        if (
            saved.get("path") == str(resolved)
            and {k: saved.get(k) for k in fingerprint} == fingerprint
        ):
            digest = saved.get("sha256")
    except (OSError, ValueError, AttributeError):
        pass
    if not isinstance(digest, str) or len(digest) != 64:
        digest = file_sha256(resolved, progress)
        # Only remember the digest if the file did not change while it was read.
        if _stat_fingerprint(resolved.stat()) == fingerprint:
            try:
                memo.parent.mkdir(parents=True, exist_ok=True)
                record = {"path": str(resolved), **fingerprint, "sha256": digest}
                _write_atomically(memo, json.dumps(record).encode())
            except OSError:
                pass  # a read-only cache still works, it just hashes every time
    return f"{digest}-ct{CONVERTER_VERSION}"


class _ProgressBar:
    """A one-line progress bar on a terminal: `label [#####.....]  48%  61/127 MB`."""

    def __init__(self, label: str, stream: TextIO, width: int = 30) -> None:
        self.label = label
        self.stream = stream
        self.width = width
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        frac = done / total if total else 1.0
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(
            f"\r{self.label} [{bar}] {frac:4.0%} {done / 1e6:5.0f}/{total / 1e6:.0f} MB"
        )
        self.stream.flush()
        self.shown = True

    def phase(self, label: str) -> _ProgressBar:
        if self.shown:
            self.stream.write("\n")
        self.label = label
        self.shown = False
        return self

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
        self.shown = False


def _looks_converted(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        return path.stat().st_size > 8 and head == b"GGUF\x02\x00\x00\x00"
    except OSError:
        return False


def _remove_stale_temporaries(target: Path, max_age_s: float = 3600.0) -> None:
    """Temporary files of conversions that were killed midway (a live one is never this old:
    the default model converts in under a second, a 70B model in minutes)."""
    now = time.time()
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > max_age_s:
                tmp.unlink()
        except OSError:
            pass


def prepared_model(
    src: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> Path:
    """The ctransformers-loadable copy of the GGUF at `src`, converting it on first use.

    `cache_dir` defaults to `default_cache_dir()`; `progress` (default: whether stderr is a
    terminal) draws a progress bar on stderr while hashing and converting. A file the 2023
    llama.cpp cannot take raises `InvalidInput` naming what is unsupported, before anything is
    written.
    """
    source = Path(src)
    if not source.is_file():
        raise InvalidInput(f"model file not found: {source}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if progress is None:
        progress = sys.stderr.isatty()
    bar = _ProgressBar(f"hashing {source.name}", sys.stderr) if progress else None
    try:
        key = cache_key(source, cache, bar)
        target = cache / key / CONVERTED_NAME
        if _looks_converted(target):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(target)
        _core.convert_for_ctransformers(
            source,
            target,
            bar.phase(f"preparing {source.name} for ctransformers") if bar else None,
        )
    finally:
        if bar is not None:
            bar.close()
    return target
