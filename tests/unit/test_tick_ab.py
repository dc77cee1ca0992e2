"""benchmarks/tick_ab.py: a run stopped by SIGTERM (``timeout``, a cancelled CI job)
removes the revision's tree it extracted into the temporary directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_removes_the_extracted_tree(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("tick_ab extracts a revision with git: needs a git checkout")
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "tick_ab.py"), "--against", "HEAD",
         "--stages", "8", "--ticks", "1000000"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Wait (a bound, not a timed claim) until the old tree is extracted and ticking.
        end = time.monotonic() + 300
        while not list(tmp_path.glob("tick-ab-*/quartfaas_ab/control")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < end, "tick_ab never extracted the revision"
            time.sleep(0.05)
        time.sleep(0.5)  # inside the paired ticks
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "KeyboardInterrupt: signal 15" in err
    assert not list(tmp_path.glob("tick-ab-*")), "the extracted tree was left behind"
