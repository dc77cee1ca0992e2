"""Static peak provisioning on the paper cluster: how many GPUs it needs, and does it fit?

For each pipeline preset and target rate, the Azure ``code`` trace is brought to the rate
(``workload/trace_rate.envelope_thinning``, at the trace's own time scale; and, for
comparison, the old time compression), static peak provisioning sizes every stage for the
peak 1 s rate (``sim/experiments.static_counts``), and ``sim/gpu_accounting.static_peak_fit``
places the replicas: one whole GPU each (exclusive, the default), or packed under MPS
sharing with stage-level anti-affinity.

Usage: ``python benchmarks/static_fit.py [--rates 2.6,20,50,100,200] [--seed 1]``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from quartfaas.sim.cluster import GpuSharing, cluster_preset
from quartfaas.sim.experiments import peak_rate, static_counts
from quartfaas.sim.gpu_accounting import static_peak_fit
from quartfaas.sim.pipelines import pipeline_preset
from quartfaas.workload.trace_rate import envelope_thinning
from quartfaas.workload.traces import load_trace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="2.6,20,50,100,200")
    ap.add_argument("--pipelines", default="bert-21b-me-21,opt-66b-me-22,llama-7b-me-5")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    trace = load_trace("azure-code")
    cluster = cluster_preset("paper")
    mps = replace(cluster, sharing=GpuSharing.MPS)
    print(f"cluster {cluster.describe()}; trace azure-code ({len(trace)} requests, "
          f"{trace.duration_s:.0f} s, {trace.mean_rate:.2f}/s)")  # fmt: skip
    head = (f"{'pipeline':>16} {'rate/s':>7} {'how':>9} {'peak/s':>7} {'replicas':>8} "
            f"{'GPUs excl':>9} {'fits':>5} {'GPUs MPS':>8} {'fits':>5}")  # fmt: skip
    print(head)
    for name in args.pipelines.split(","):
        pipe = pipeline_preset(name)
        for rate in (float(r) for r in args.rates.split(",")):
            for how in ("own-time", "squeezed"):
                if how == "own-time":
                    arr = envelope_thinning(trace, rate, seed=args.seed).arrivals_s
                else:
                    arr = trace.rescale_to_rate(rate).arrivals_s
                counts = static_counts(pipe, cluster, arr)
                ex = static_peak_fit(pipe, cluster, counts)
                sh = static_peak_fit(pipe, mps, counts, anti_affinity="stage")
                print(f"{name:>16} {rate:>7g} {how:>9} {peak_rate(arr):>7.0f} {ex.replicas:>8} "
                      f"{ex.gpus_needed:>9} {'yes' if ex.fits else 'NO':>5} "
                      f"{sh.gpus_needed:>8} {'yes' if sh.fits else 'NO':>5}")  # fmt: skip


if __name__ == "__main__":
    main()
