"""Builders shared by tests: ``from helpers import synthetic_spec`` (tests/ is on sys.path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from quartfaas.spec import PipelineSpec, parse_spec


def synthetic_spec(
    n_stages: int = 3,
    *,
    name: str = "syn",
    work: str = "none",
    mean_ms: float = 0.0,
    scv: float = 0.0,
    stage_overrides: dict[int, dict[str, Any]] | None = None,
    **top: Any,
) -> PipelineSpec:
    """A synthetic pipeline (no weights) for fast integration tests."""
    stages = []
    for i in range(n_stages):
        s: dict[str, Any] = {
            "name": f"{name}-s{i}",
            "synthetic": {"work": work, "mean_ms": mean_ms, "scv": scv},
            "max_concurrency": 4,
            "max_replicas": 4,
        }
        s.update((stage_overrides or {}).get(i, {}))
        stages.append(s)
    data: dict[str, Any] = {
        "name": name,
        "model": {"kind": "synthetic"},
        "gateway": {"port": 0, "replica_start_timeout_s": 30},
        "controller": {"enabled": False},
        "stages": stages,
    }
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_spec(data)


def worker_pids(marker: str) -> list[int]:
    """PIDs of live processes whose command line contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            pids.append(int(entry.name))
    return pids


def tiny_bert_spec(
    weights_dir: Path, *, name: str = "tiny", stages: int = 3, **top: Any
) -> PipelineSpec:
    """A few-MB BERT-style pipeline with weights in ``weights_dir`` (call make_weights)."""
    data: dict[str, Any] = {
        "name": name,
        "model": {
            "kind": "bert",
            "layers": 4,
            "hidden_size": 64,
            "heads": 4,
            "vocab_size": 1000,
            "max_seq_len": 32,
            "seed": 7,
        },
        "weights_dir": str(weights_dir),
        "gateway": {"port": 0, "replica_start_timeout_s": 60},
        "controller": {"enabled": False},
        "stages": [{"name": f"{name}-s{i}", "max_concurrency": 2} for i in range(stages)],
    }
    data.update(top)
    return parse_spec(data)


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` loaded as a module (the benchmarks are scripts, not a
    package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
