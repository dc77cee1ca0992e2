"""Time from ``quartfaas serve`` to ready (issue #13, item 12), on the `tiny` pipeline.

Each run starts ``quartfaas serve SPEC --port 0 --no-controller`` as a user does and
records, from the moment the command is started:

- ``listening_s``: the "listening on URL" line (the port is bound; ``/healthz`` answers);
- ``readyz_s``: the first ``GET /readyz`` answered 200 (every stage has its
  ``min_replicas`` in rotation), polled every 20 ms;
- ``ready_line_s``: the "ready: serving" line;
- ``first``: status and time of a pipeline request sent right at "listening": it waits
  for the stages' first replicas (before issue #13 it answered 504 after the first
  stage's timeout);
- ``exit_s``: time from Ctrl-C (SIGINT) to the process's exit.

Run::

    python benchmarks/serve_ready.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_probes import make_weights, quartfaas_cmd, write_spec

PAYLOAD = {"inputs": [[101, 2023, 2003, 1037, 3231, 102]]}


async def wait_line(log: Path, pattern: str, proc: subprocess.Popen[bytes], t0: float,
                    timeout_s: float) -> tuple[float, re.Match[str]]:  # fmt: skip
    while time.monotonic() - t0 < timeout_s:
        m = re.search(pattern, log.read_text(errors="replace"))
        if m:
            return time.monotonic() - t0, m
        if proc.poll() is not None:
            break
        await asyncio.sleep(0.01)
    tail = log.read_text(errors="replace")[-1500:]
    raise RuntimeError(f"no line matching {pattern!r}; log tail:\n{tail}")


async def one_run(spec: Path, log: Path, timeout_s: float) -> dict[str, Any]:
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*quartfaas_cmd(), "serve", str(spec), "--port", "0", "--no-controller"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            env={**os.environ, "COLUMNS": "200"}, start_new_session=True,
        )  # fmt: skip
    row: dict[str, Any] = {}
    try:
        listening_s, m = await wait_line(log, r"listening on (http://\S+?);", proc, t0, timeout_s)
        url = m.group(1)
        row["listening_s"] = round(listening_s, 2)
        name = spec.stem
        async with aiohttp.ClientSession() as session:

            async def first() -> None:
                async with session.post(f"{url}/function/{name}", json=PAYLOAD) as r:
                    await r.read()
                    row["first"] = f"{r.status} @ {time.monotonic() - t0:.2f} s"

            async def readyz() -> None:
                while time.monotonic() - t0 < timeout_s:
                    try:
                        async with session.get(f"{url}/readyz") as r:
                            if r.status == 200:
                                row["readyz_s"] = round(time.monotonic() - t0, 2)
                                return
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.02)

            await asyncio.gather(first(), readyz())
        ready_s, _ = await wait_line(log, r"ready: serving", proc, t0, timeout_s)
        row["ready_line_s"] = round(ready_s, 2)
        t1 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        await asyncio.to_thread(proc.wait, 60)
        row["exit_s"] = round(time.monotonic() - t1, 2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return row


COLUMNS = ("run", "listening_s", "readyz_s", "ready_line_s", "first", "exit_s")


def table(rows: list[dict[str, Any]]) -> str:
    cells = [[str(r.get(c, "-")) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="qf-ready-"))
    rows: list[dict[str, Any]] = []
    try:
        weights = await asyncio.to_thread(make_weights, work)
        for i in range(args.runs):
            spec, _ = write_spec(work, f"sr{os.getpid() % 100000}r{i}", weights)
            row = {"run": i + 1, **await one_run(spec, work / f"{i}.log", args.timeout_s)}
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median: dict[str, Any] = {"run": "median"}
    for key in ("listening_s", "readyz_s", "ready_line_s", "exit_s"):
        values = [r[key] for r in rows if key in r]
        if values:
            median[key] = round(statistics.median(values), 2)
    return [*rows, median]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout-s", type=float, default=180.0)
    args = ap.parse_args()
    print(table(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
