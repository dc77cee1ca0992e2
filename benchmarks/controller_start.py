"""What starting a Quart controller costs: a fresh process's imports and policy, its first
tick and the tick after, its peak memory, and whether it imported torch.

Each run is a new interpreter (``sys.executable``) that imports ``quartfaas.control``,
builds ``QuartPolicy`` with the default predictor (the shipped GAT where its metrics beat
QNA), and decides two ticks of ``controller_tick.build_snapshots`` (``--stages``). Two
rows, interleaved ``--repeats`` times:

* ``controller``: as the controller runs;
* ``+ torch module``: the same, then the GAT's torch module built from the loaded weights
  (``GatPredictor._torch_model``, what ``load`` did before it read the weights with
  ``safetensors.numpy``), so the difference is measured in the same run, not remembered.

Prints the median and range of each figure over the repeats, and the files that the
runs left in their temporary directory (each child gets its own ``TMPDIR``):
torch_geometric writes its generated message-passing code there and never removes it.

    python benchmarks/controller_start.py [--stages 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {bench!r})
from controller_tick import build_snapshots
from quartfaas.control.config import ControllerConfig
from quartfaas.control.quart import QuartPolicy
snaps = build_snapshots({stages}, 3)
pol = QuartPolicy(ControllerConfig.model_validate({{}}), host_cores=16)
state = pol.initial_state(snaps[0])
t1 = time.perf_counter()
_, state = pol.decide(snaps[1], state)
t2 = time.perf_counter()
_, state = pol.decide(snaps[2], state)
t3 = time.perf_counter()
predictor = pol.predictor_reason
if {torch_module}:
    build = getattr(pol.predictor, "_torch_model", None)
    if build is None:
        raise SystemExit("the predictor is not the GAT: no torch module to build")
    build()
t4 = time.perf_counter()
print(json.dumps({{
    "predictor": predictor,
    "setup_s": t1 - t0,
    "first_tick_s": t2 - t1,
    "second_tick_ms": 1e3 * (t3 - t2),
    "torch_module_s": t4 - t3,
    "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "torch": "torch" in sys.modules,
    "torch_geometric": "torch_geometric" in sys.modules,
}}))
"""


def _run(stages: int, torch_module: bool) -> dict[str, object]:
    bench = str(Path(__file__).resolve().parent)
    code = _CHILD.format(bench=bench, stages=stages, torch_module=torch_module)
    with tempfile.TemporaryDirectory(prefix="controller-start-") as tmp:
        env = {**os.environ, "TMPDIR": tmp}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
        )
        if out.returncode != 0:
            raise SystemExit(f"the child failed ({out.returncode}):\n{out.stderr}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["tmp_files"] = sum(1 for _ in Path(tmp).iterdir())
    return row


def _spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.stages < 1 or args.repeats < 1:
        ap.error("--stages and --repeats must be at least 1")
    rows: dict[str, list[dict[str, object]]] = {"controller": [], "+ torch module": []}
    for k in range(args.repeats):
        print(f"repeat {k + 1}/{args.repeats}", file=sys.stderr, flush=True)
        for label, runs in rows.items():
            runs.append(_run(args.stages, label != "controller"))
    print(f"{args.stages} stages, {args.repeats} fresh processes a row (interleaved), "
          f"{sys.executable}; median (min-max)")  # fmt: skip
    head = ("row", "setup s", "first tick s", "second tick ms", "max RSS MB", "torch", "tmp files")
    print(f"{head[0]:16} {head[1]:>18} {head[2]:>18} {head[3]:>18} {head[4]:>18}  "
          f"{head[5]:>5} {head[6]:>9}")  # fmt: skip
    for label, runs in rows.items():

        def col(key: str, fmt: str, runs: list[dict[str, object]] = runs) -> str:
            return _spread([float(r[key]) for r in runs], fmt)  # type: ignore[arg-type]

        setup = [float(r["setup_s"]) + float(r["torch_module_s"]) for r in runs]  # type: ignore[arg-type]
        torch = "yes" if any(r["torch"] for r in runs) else "no"
        files = sum(int(r["tmp_files"]) for r in runs) / len(runs)  # type: ignore[call-overload]
        print(f"{label:16} {_spread(setup, '.2f'):>18} {col('first_tick_s', '.3f'):>18} "
              f"{col('second_tick_ms', '.1f'):>18} {col('max_rss_mb', '.0f'):>18}  "
              f"{torch:>5} {files:>9.1f}")  # fmt: skip
    print(f"predictor: {rows['controller'][0]['predictor']}; '+ torch module' adds building "
          "the GAT's torch module to setup (what loading the GAT did before it read the "
          "weights with safetensors.numpy)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
