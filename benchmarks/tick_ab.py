"""Paired A/B of the controller tick: this tree against a git revision, in one process.

``controller_tick.py`` times one tree; on a shared, noisy host (steal time, a neighbour's
load) two runs minutes apart can differ by 20% or more with the same code (1.6x seen on one
host), which hides a change
of a few percent. Here the revision's ``src/quartfaas`` is extracted (``git archive``)
and imported under another package name, both trees' policies decide the *same*
snapshots (``controller_tick.build_snapshots``), and their ticks alternate, which one
goes first alternating too, so both see the same machine at the same moment. It prints
both medians, the median and spread of the per-tick ratio new/old, and how many ticks
decided differently (replicas, CPU targets, or the tick's or a stage's reason; 0 for a
pure speed-up).

    python benchmarks/tick_ab.py --against da3a225 [--stages 64] [--ticks 600]
        [--warmup 60] [--predictor auto|gat|qna]

Exits 1 if the revision cannot be extracted (not a git checkout, unknown revision). A
``SIGTERM`` (``timeout``, a CI runner's cancel) stops it like Ctrl-C, removing the
extracted tree.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from controller_tick import build_snapshots
from quartfaas.control import snapshot as new_snapshot
from quartfaas.control.config import ControllerConfig
from quartfaas.control.quart import QuartPolicy

_ALIAS = "quartfaas_ab"
_NAME = re.compile(r"\bquartfaas(?=[.\s\"']|$)", re.MULTILINE)


def extract(revision: str, into: Path) -> None:
    """``src/quartfaas`` of ``revision`` as package ``quartfaas_ab`` under ``into``."""
    root = Path(__file__).resolve().parent.parent
    tar = into / "tree.tar"
    with tar.open("wb") as out:
        subprocess.run(
            ["git", "-C", str(root), "archive", revision, "src/quartfaas"], stdout=out, check=True
        )
    with tarfile.open(tar) as tf:
        try:
            tf.extractall(into, filter="data")
        except TypeError:  # Python 3.11 before 3.11.4 has no extraction filters
            tf.extractall(into)
    pkg = into / _ALIAS
    (into / "src" / "quartfaas").rename(pkg)
    for path in pkg.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        path.write_text(_NAME.sub(_ALIAS, text), encoding="utf-8")


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _summary(d: Any) -> tuple[object, ...]:
    return d.reason, [(s.stage, s.replicas, s.cpu_per_replica, s.reason) for s in d.stages]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="git revision to compare with")
    ap.add_argument("--stages", type=int, default=64)
    ap.add_argument("--ticks", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--predictor", default="auto")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # unwinds, so the tree below is removed
    with tempfile.TemporaryDirectory(prefix="tick-ab-") as tmp:
        try:
            extract(args.against, Path(tmp))
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"cannot extract {args.against}: {exc}", file=sys.stderr)
            return 1
        sys.path.insert(0, tmp)
        import importlib

        old_snapshot = importlib.import_module(f"{_ALIAS}.control.snapshot")
        old_config = importlib.import_module(f"{_ALIAS}.control.config")
        old_quart = importlib.import_module(f"{_ALIAS}.control.quart")
        n = 240
        snaps = {
            "new": build_snapshots(args.stages, n, snapshot_module=new_snapshot),
            "old": build_snapshots(args.stages, n, snapshot_module=old_snapshot),
        }
        policies = {
            "new": QuartPolicy(
                ControllerConfig.model_validate({}), predictor=args.predictor, host_cores=16
            ),
            "old": old_quart.QuartPolicy(
                old_config.ControllerConfig.model_validate({}),
                predictor=args.predictor,
                host_cores=16,
            ),
        }
        states = {k: p.initial_state(snaps[k][0]) for k, p in policies.items()}
        times: dict[str, list[float]] = {"new": [], "old": []}
        differ = 0
        load_before = _loadavg()
        for i in range(args.warmup + args.ticks):
            got = {}
            for k in ("new", "old") if i % 2 else ("old", "new"):
                snap = dataclasses.replace(snaps[k][i % n], now=1e3 + i)
                t0 = time.perf_counter()
                decision, states[k] = policies[k].decide(snap, states[k])
                dt = (time.perf_counter() - t0) * 1e3
                got[k] = _summary(decision)
                if i >= args.warmup:
                    times[k].append(dt)
            differ += i >= args.warmup and got["new"] != got["old"]
    ratios = sorted(a / b for a, b in zip(times["new"], times["old"], strict=True))

    def pct(p: float) -> float:
        return ratios[min(len(ratios) - 1, int(p * len(ratios)))]

    print(
        f"{args.stages} stages, predictor {args.predictor}, {args.ticks} paired ticks after "
        f"{args.warmup} warm-up; load average before {load_before}, after {_loadavg()}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"old ({args.against}) median {statistics.median(times['old']):.3f} ms")
    print(f"new (this tree)     median {statistics.median(times['new']):.3f} ms")
    print(
        f"per-tick ratio new/old: median {statistics.median(ratios):.3f} "
        f"(p10 {pct(0.10):.3f}, p90 {pct(0.90):.3f})"
    )
    print(f"ticks that decided differently: {differ} of {args.ticks}")
    return 0


def _loadavg() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())
