"""The checked-in `_core.pyi` must match the compiled module exactly."""

from __future__ import annotations

import subprocess
import sys


def test_core_stub_matches_runtime() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "threadloom._core"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
