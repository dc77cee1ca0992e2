"""Scale-up benchmark (issues #3, #15): call-to-ready per cache tier, first request, PSS,
scale from zero, and the burst rows (1 -> 4 and 1 -> 8 at once, today's single-child pool
beside the forecast-sized pool).

    python benchmarks/scaleup.py [SPEC] [--repeats 5] [--burst-only | --no-burst]
                                 [--sizes 4,8]          (default SPEC: examples/bert-1g.yaml)

``quartfaas bench scaleup SPEC`` runs the per-tier part; see ``quartfaas.bench.scaleup``
and ``quartfaas.bench.burst`` for what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from quartfaas.bench.burst import report_burst, run_burst
from quartfaas.bench.scaleup import report, run_scaleup
from quartfaas.spec import load_spec

DEFAULT = Path(__file__).resolve().parent.parent / "src/quartfaas/examples/bert-1g.yaml"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--sizes", default="4,8", help="burst sizes, comma-separated")
    part = ap.add_mutually_exclusive_group()
    part.add_argument("--burst-only", action="store_true")
    part.add_argument("--no-burst", action="store_true")
    args = ap.parse_args()
    spec = load_spec(args.spec)
    ok = True
    if not args.burst_only:
        res = asyncio.run(run_scaleup(spec, repeats=args.repeats, seq_len=args.seq_len))
        text, ok = report(res)
        print(text)
    if not args.no_burst:
        sizes = tuple(int(x) for x in args.sizes.split(","))
        burst = asyncio.run(
            run_burst(spec, sizes=sizes, repeats=args.repeats, seq_len=args.seq_len)
        )
        text, burst_ok = report_burst(burst)
        print(text)
        ok = ok and burst_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
