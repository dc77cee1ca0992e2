"""The controller tick of this tree under several Python interpreters, interleaved.

The full Quart tick is mostly CPython running small functions (a few thousand calls a
tick), so how the interpreter was built shows in it: a build without profile-guided
optimisation and link-time optimisation, with libpython as a shared library (pyenv's
default, this host's ``python3``), against a distribution's static PGO+LTO build (Debian's
``/usr/bin/python3.11``; the official ``python`` images and python.org's builds use PGO
and LTO too). On a host whose speed drifts by 1.5x over minutes, two benchmark runs at
different times compare nothing, so the interpreters take turns: each round runs
``controller_tick.py --rows 1 --json`` (the full Quart tick, 64 stages) once under each,
the order alternating, on *this* tree's ``src`` (``PYTHONPATH``), and the table shows
each round's medians and their ratio.

    python benchmarks/tick_interpreters.py --python /path/to/other/venv/bin/python
        [--rounds 4] [--repeats 400] [--warmup 60]

Every interpreter needs quartfaas's dependencies (a venv made by ``PYTHON=/usr/bin/python3
scripts/setup.sh`` in another checkout will do; its own ``quartfaas`` is shadowed by this
tree's). The first interpreter is the one running this script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW = "quart (gat)"


def one_run(python: str, repeats: int, warmup: int) -> tuple[str, float]:
    """``(interpreter, median ms)`` of the full Quart tick, one ``controller_tick`` run."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    cmd = [
        python,
        str(ROOT / "benchmarks" / "controller_tick.py"),
        "--rows", "1", "--repeats", str(repeats), "--warmup", str(warmup), "--json",
        "--limit-ms", "1e9", "--rounds", "1",  # the rounds are this script's, alternating
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{python}: controller_tick.py failed:\n{out.stderr[-2000:]}")
    last = out.stdout.strip().splitlines()[-1]
    got = json.loads(last)
    return got["interpreter"], float(got["rows"][ROW]["median_ms"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--python", action="append", required=True, help="another interpreter (repeatable)"
    )
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=60)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1 or args.warmup < 0:
        ap.error("need --rounds >= 1, --repeats >= 1, --warmup >= 0")
    pythons = [sys.executable, *args.python]
    for p in args.python:
        if not Path(p).exists():
            ap.error(f"no interpreter at {p}")
    names: list[str] = [""] * len(pythons)
    medians: list[list[float]] = [[] for _ in pythons]
    print(f"full Quart tick, 64 stages, {args.repeats} ticks after {args.warmup} warm-up "
          f"per run; {args.rounds} rounds, the order alternating; median ms per run")  # fmt: skip
    for r in range(args.rounds):
        order = list(range(len(pythons)))
        if r % 2:
            order.reverse()
        for i in order:
            names[i], m = one_run(pythons[i], args.repeats, args.warmup)
            medians[i].append(m)
        row = "  ".join(f"[{i}] {medians[i][-1]:6.3f}" for i in range(len(pythons)))
        rel = "  ".join(
            f"[{i}]/[0] {medians[i][-1] / medians[0][-1]:.3f}" for i in range(1, len(pythons))
        )
        print(f"round {r + 1}: {row}   {rel}", flush=True)
    for i, name in enumerate(names):
        ms = medians[i]
        print(f"[{i}] {name}: median of runs {statistics.median(ms):.3f} ms "
              f"(min {min(ms):.3f}, max {max(ms):.3f})")  # fmt: skip
    for i in range(1, len(pythons)):
        ratios = [b / a for a, b in zip(medians[0], medians[i], strict=True)]
        print(f"ratio [{i}]/[0] per round: median {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
