"""The repository's own contract: lint clean, typed, layering kept (house style)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_import_layering_contract() -> None:
    res = _run(str(BIN / "lint-imports"))
    assert res.returncode == 0, res.stdout + res.stderr


def test_ruff_clean() -> None:
    res = _run(str(BIN / "ruff"), "check", "src", "tests", "benchmarks")
    assert res.returncode == 0, res.stdout + res.stderr


def test_ruff_format_clean() -> None:
    res = _run(str(BIN / "ruff"), "format", "--check", "src", "tests", "benchmarks")
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.slow
def test_mypy_clean() -> None:
    res = _run(str(BIN / "mypy"))
    assert res.returncode == 0, res.stdout + res.stderr
