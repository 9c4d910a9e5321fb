"""The package passes ruff (with its complexity and simplification rules) and `mypy --strict`
(pyproject.toml's [tool.mypy] strict = true): part of the test command, so CI enforces both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_TIMEOUT_SECONDS = 300


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=LINT_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.mark.slow
def test_ruff_passes():
    result = _run("ruff", "check", "tracker_agent", "tests", "bench", "migrations")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_ruff_format_leaves_the_tree_unchanged():
    result = _run("ruff", "format", "--check", "tracker_agent", "tests", "bench", "migrations")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict_passes():
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
