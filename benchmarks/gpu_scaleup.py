"""GPU scale-up: host-to-device load time of a >= 4 GiB stage, per path (needs a CUDA GPU).

The parameter cache's GPU path: a stage template holds the weights in host memory and never
initialises CUDA; a forked child initialises CUDA itself and copies the weights to its
device. This script measures, for one >= 4 GiB stage (default: 6 layers at hidden 4096 =
4.5 GiB fp32; ``--dtype bfloat16`` halves it):

- ``fork+pageable``: fork from a template holding the weights, child copies to the GPU;
- ``fork+pinned``: same, but the child first pins the shared pages (cudaHostRegister), so
  the copy runs at full PCIe/NVLink-C2C bandwidth; pinning itself is timed too;
- ``cold``: a fresh process reading the stage file straight to the GPU (safetensors).

For each: CUDA init, weight copy, first forward, total to ready; median of ``--repeats``.
Run it where an accelerator is lent:

    python benchmarks/gpu_scaleup.py [--repeats 3] [--dtype float32|bfloat16] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _spec(weights_dir: Path, dtype: str) -> Any:
    from quartfaas.spec import parse_spec

    return parse_spec({
        "name": "gpu4g",
        "model": {"kind": "bert", "layers": 6, "hidden_size": 4096, "heads": 32,
                  "intermediate_size": 16384, "vocab_size": 8000, "max_seq_len": 128,
                  "dtype": dtype},
        "weights_dir": str(weights_dir),
        "stages": [{"name": "gpu4g-s0", "device": "cuda"}],
    })  # fmt: skip


def _child(spec: Any, state: dict[str, Any] | None, pinned: bool, conn: int) -> None:
    """Runs in the forked child (or a fresh process when ``state`` is None)."""
    import torch

    from quartfaas.models import build_stage

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    torch.cuda.init()
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    out["cuda_init_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    if state is None:  # cold: the file straight to the device
        from safetensors.torch import load_file

        state = load_file(str(spec.stage_weights_path(0)), device="cuda")
        model = build_stage(spec, 0, device="cuda", weights=state)
    else:
        if pinned:
            cudart = torch.cuda.cudart()
            tp = time.perf_counter()
            for t in state.values():
                # Pin the (shared, copy-on-write) pages in place; no copy on the host.
                cudart.cudaHostRegister(t.data_ptr(), t.numel() * t.element_size(), 0)
            out["pin_s"] = time.perf_counter() - tp
        gpu = {k: v.to("cuda", non_blocking=pinned) for k, v in state.items()}
        torch.cuda.synchronize()
        model = build_stage(spec, 0, device="cuda", weights=gpu)
    torch.cuda.synchronize()
    out["copy_s"] = time.perf_counter() - t1
    ex = model.example_inputs(1, 16)
    t2 = time.perf_counter()
    with torch.inference_mode():
        model.forward({k: v.to("cuda") for k, v in ex.items()})
    torch.cuda.synchronize()
    out["first_forward_s"] = time.perf_counter() - t2
    out["total_s"] = time.perf_counter() - t0
    os.write(conn, (json.dumps(out) + "\n").encode())
    os._exit(0)


def _fork_run(spec: Any, state: dict[str, Any] | None, pinned: bool) -> dict[str, float]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            _child(spec, state, pinned, w)
        finally:
            os._exit(1)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError("child failed (see its traceback above)")
    return dict(json.loads(data))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (run this where a GPU is lent)")
        return 0
    torch.set_num_threads(1)  # the template: no multi-threaded op before fork
    from quartfaas.models import load_stage_state, make_weights, stage_param_bytes

    wdir = Path(tempfile.mkdtemp(prefix="gpu4g-", dir="/dev/shm"))
    spec = _spec(wdir, args.dtype)
    t = time.perf_counter()
    make_weights(spec)
    size = stage_param_bytes(spec, 0)
    # This process is the template: it must not touch CUDA before forking.
    print(f"stage of {size / 2**30:.2f} GiB made in {time.perf_counter() - t:.1f} s")
    state = load_stage_state(spec.stage_weights_path(0), "mmap")
    results: dict[str, list[dict[str, float]]] = {"fork+pageable": [], "fork+pinned": [],
                                                  "cold": []}  # fmt: skip
    for i in range(args.repeats):
        print(f"repeat {i + 1}/{args.repeats}", flush=True)
        results["fork+pageable"].append(_fork_run(spec, state, pinned=False))
        results["fork+pinned"].append(_fork_run(spec, state, pinned=True))
        results["cold"].append(_fork_run(spec, None, pinned=False))
    keys = ["cuda_init_s", "pin_s", "copy_s", "first_forward_s", "total_s"]
    print(f"\n{'path':<16}" + "".join(f"{k:>17}" for k in keys) + f"{'GB/s copy':>12}")
    for path, rows in results.items():
        med = {k: statistics.median([r[k] for r in rows if k in r]) for k in keys
               if any(k in r for r in rows)}  # fmt: skip
        cells = "".join(f"{med[k]:>16.3f}s" if k in med else f"{'-':>17}" for k in keys)
        print(f"{path:<16}{cells}{size / med['copy_s'] / 1e9:>12.2f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_scaleup.json").write_text(json.dumps({"bytes": size, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
