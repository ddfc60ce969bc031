"""The checked-in `_core.pyi` matches the compiled module, and the package type-checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_core_stub_matches_runtime() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "threadloom._core"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_type_checks() -> None:
    """The package's own annotations agree with each other and with `_core.pyi` (it ships
    `py.typed`, so users' type checkers read them)."""
    package = Path(__file__).resolve().parent.parent / "python" / "threadloom"
    result = subprocess.run(
        [sys.executable, "-m", "mypy", str(package)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
