"""The Pipeline Smoother: replicas before a burst arrives, and smoothing across neighbours.

Decides how to adjust the corrector's per-stage targets (``CorrectorTargets``) from
predicted burstiness: each stage's arrival CV and rate over the next horizon, propagated
down the pipeline by QNA (``propagation``) or by a small graph-attention network trained in
the simulator (``gat``). ``smoother.PipelineSmoother`` pre-provisions for predicted bursts,
pulls smooth stages toward their neighbours and keeps an optional replica budget.
"""

from quartfaas.control.smoother.smoother import (
    PipelineSmoother,
    SmootherConfig,
    beta,
    smooth_headroom,
    smooth_replicas,
)

__all__ = [
    "PipelineSmoother",
    "SmootherConfig",
    "beta",
    "smooth_headroom",
    "smooth_replicas",
]
