"""Scale-up benchmark (issue #3): call-to-ready per cache tier, first request, PSS, scale from zero.

    python benchmarks/scaleup.py [SPEC] [--repeats 5]     (default SPEC: examples/bert-1g.yaml)

Same as ``quartfaas bench scaleup SPEC``; see ``quartfaas.bench.scaleup`` for what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from quartfaas.bench.scaleup import report, run_scaleup
from quartfaas.spec import load_spec

DEFAULT = Path(__file__).resolve().parent.parent / "src/quartfaas/examples/bert-1g.yaml"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seq-len", type=int, default=16)
    args = ap.parse_args()
    res = asyncio.run(run_scaleup(load_spec(args.spec), repeats=args.repeats, seq_len=args.seq_len))
    text, ok = report(res)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
