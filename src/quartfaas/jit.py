"""numba's ``njit`` where numba is installed, the function itself otherwise.

numba is a dependency (``pyproject.toml``) but optional at run time: a kernel compiled
with ``jit`` is plain Python source, runs as such without numba (or with
``NUMBA_DISABLE_JIT=1``, which the tests use for the fallback), and gives the same numbers
either way as long as it uses IEEE add, multiply, divide and compare only (numba's and
numpy's exponentials and logarithms may differ in the last bit). Compiled kernels are
cached on disk (``cache=True``): a process compiles each once per source change.
Users: the simulator's engine (``sim/kernel.py``, ``sim/windowstats.py``,
``sim/windowbuckets.py``) and the controller tick's small loops (the planner's queueing
arithmetic and wait masses, ``control/corrector/planner.py``; the tail model's service
masses and wait rows, ``tailmodel.py``; the smoother's QNA pass and GAT attention,
``control/smoother/``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:  # numba is optional: the kernels are faster with it, correct without it
    from numba import config as _numba_config
    from numba import njit as _njit

    HAVE_NUMBA = True
    COMPILED = not getattr(_numba_config, "DISABLE_JIT", False)
except ImportError:  # pragma: no cover - exercised only where numba is absent
    HAVE_NUMBA = False
    COMPILED = False


def jit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled by numba (nopython, cached, releasing the GIL) if it is installed."""
    if HAVE_NUMBA:
        return _njit(cache=True, nogil=True)(fn)
    return fn


__all__ = ["COMPILED", "HAVE_NUMBA", "jit"]
