"""control/warm.py: a policy's first tick on a made-up pipeline, before a runtime serves."""

from __future__ import annotations

import subprocess
import sys

import pytest

from quartfaas.control.config import ControllerConfig
from quartfaas.control.registry import make_policy, policy_names
from quartfaas.control.warm import warm_pipeline, warm_up
from quartfaas.jit import COMPILED


@pytest.mark.parametrize("name", policy_names())
def test_every_policy_warms_up(name: str) -> None:
    policy = make_policy(name, ControllerConfig())
    warm_up(policy)  # raises nothing for any policy
    # the made-up pipeline is a real one to the policy: it decides every stage
    snap = warm_pipeline()
    decision, _ = policy.decide(snap, policy.initial_state(snap))
    assert [d.stage for d in decision.stages] == [s.name for s in snap.stages]
    if name.startswith("quart"):  # Quart plans it (no hold): the tick's kernels all run
        assert not decision.hold and "plan feasible" in decision.reason, decision.reason


@pytest.mark.skipif(not COMPILED, reason="numba is absent or disabled: nothing to compile")
def test_warming_quart_compiles_every_kernel_of_its_tick() -> None:
    # In a fresh interpreter (this one may have compiled them in other tests): before the
    # warm-up no kernel has a compiled signature, after it every one of a Quart tick has.
    code = """
from quartfaas.control.config import ControllerConfig
from quartfaas.control.corrector import planner, tailmodel
from quartfaas.control.registry import make_policy
from quartfaas.control.smoother import gat, propagation
from quartfaas.control.warm import warm_up
# every numba kernel of the tick's modules (a new one is counted without editing this)
kernels = [k for m in (planner, tailmodel, propagation, gat) for k in vars(m).values()
           if hasattr(k, "signatures") and getattr(k, "py_func", None) is not None
           and k.py_func.__module__ == m.__name__]
policy = make_policy("quart", ControllerConfig())
print(sum(1 for k in kernels if k.signatures), end=" ")
warm_up(policy)
print(sum(1 for k in kernels if k.signatures), len(kernels))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after, total = (int(v) for v in out.stdout.split())
    assert before == 0 and after == total and total >= 11, out.stdout


def test_the_live_controller_s_process_never_imports_torch() -> None:
    """The live controller runs in the gateway's process (``live_control.py``), which
    never imports torch: warming Quart up (its GAT loaded and run) imports neither torch
    nor torch_geometric (loading the GAT built its torch module until 2026-12-05: ~3 s
    and ~290 MB in the gateway's process, ``benchmarks/controller_start.py``)."""
    code = """
import sys
from quartfaas.control.config import ControllerConfig
from quartfaas.control.registry import make_policy
from quartfaas.control.warm import warm_up
policy = make_policy("quart", ControllerConfig())
warm_up(policy)
print(policy.predictor_reason.split()[1], "torch" in sys.modules, "torch_geometric" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["gat", "False", "False"], out.stdout
