"""What a gateway leaves behind (issue #13, item 8): nothing after a clean shutdown, and
what a kill -9 left is swept by the next gateway's start, recognised by the dead pid."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import synthetic_spec, tiny_bert_spec, worker_pids
from quartfaas.backends.cgroups import CgroupV1Cpu
from quartfaas.dataplane.launch import PID_FILE, sweep_stale_dirs
from quartfaas.dataplane.param_cache.launcher import sweep_stale_shm
from quartfaas.runtime import EmbeddedRuntime

pytestmark = pytest.mark.timeout(240)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweeps_remove_only_what_dead_gateways_left(tmp_path: Path) -> None:
    dead, alive = dead_pid(), os.getppid()
    for pid in (dead, alive):
        d = tmp_path / f"quartfaas-p-{pid}"
        d.mkdir()
        (d / PID_FILE).write_text(f"{pid}\n")
        (tmp_path / "shm" / f"p-{pid}").mkdir(parents=True)
    (tmp_path / "quartfaas-nopid").mkdir()  # no pid file: not ours to judge
    assert sweep_stale_dirs(tmp_path) == [tmp_path / f"quartfaas-p-{dead}"]
    assert sorted(p.name for p in tmp_path.glob("quartfaas-*")) == sorted(
        [f"quartfaas-p-{alive}", "quartfaas-nopid"]
    )
    assert sweep_stale_shm(tmp_path / "shm") == [tmp_path / "shm" / f"p-{dead}"]
    assert [p.name for p in (tmp_path / "shm").iterdir()] == [f"p-{alive}"]


def test_cgroup_names_carry_the_gateway_pid_and_dead_ones_are_swept(tmp_path: Path) -> None:
    cg = CgroupV1Cpu(tmp_path, proc_root=tmp_path / "proc")
    dead = dead_pid()
    other = CgroupV1Cpu(tmp_path, proc_root=tmp_path / "proc")
    other.own_prefix("tiny", dead)
    assert other.create_group("tiny-embed-1").ok
    assert cg.own_prefix("tiny", os.getpid()) == f"g{os.getpid()}.tiny."
    assert cg.create_group("tiny-embed-1").ok
    # Two gateways of one pipeline: same replica id, different groups.
    assert cg.group_dir("tiny-embed-1") != other.group_dir("tiny-embed-1")
    (tmp_path / "quartfaas" / "unrelated").mkdir()
    removed = cg.sweep_stale(lambda pid: pid != dead)
    assert removed == [other.group_dir("tiny-embed-1")]
    left = sorted(p.name for p in (tmp_path / "quartfaas").iterdir())
    assert left == sorted([cg.group_dir("tiny-embed-1").name, "unrelated"])


def test_clean_shutdown_leaves_no_folder_and_no_weights_copy(
    tmp_path: Path, kill_leftovers: list[str]
) -> None:
    spec = synthetic_spec(2, name="tidy", cache={"shm_dir": str(tmp_path / "shm")})

    async def main() -> None:
        async with EmbeddedRuntime(spec, base_dir=tmp_path) as rt:
            kill_leftovers.append(str(rt.files.dir))
            assert rt.files.dir.is_dir()
        assert list(tmp_path.glob("quartfaas-*")) == []
        assert not (tmp_path / "shm").exists() or list((tmp_path / "shm").iterdir()) == []

    asyncio.run(main())


GATEWAY = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from quartfaas.spec import load_spec
    from quartfaas.runtime import EmbeddedRuntime

    async def main():
        rt = EmbeddedRuntime(load_spec(Path(sys.argv[1])), base_dir=Path(sys.argv[2]))
        await rt.start()
        print("ready", rt.files.dir, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def test_kill_9_leftovers_are_swept_by_the_next_start(
    tmp_path: Path, kill_leftovers: list[str]
) -> None:
    weights = tmp_path / "w"
    shm = tmp_path / "shm"
    spec = tiny_bert_spec(weights, name="crash", stages=2, cache={"shm_dir": str(shm)})
    from quartfaas.models import make_weights

    make_weights(spec)
    spec_path = tmp_path / "crash.json"
    spec_path.write_text(spec.model_dump_json())
    base = tmp_path / "run"
    base.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", GATEWAY, str(spec_path), str(base)],
        stdout=subprocess.PIPE, text=True, env={**os.environ},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready"), line
        marker = line.split()[1]
        kill_leftovers.append(marker)
        assert list(shm.iterdir()), "the gateway copies the weights to tmpfs"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 60
    while worker_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.05)  # workers exit on their own (lifeline)
    assert worker_pids(marker) == []
    assert [p.name for p in shm.iterdir()] == [f"crash-{proc.pid}"]
    assert Path(marker).is_dir()

    async def restart() -> None:
        async with EmbeddedRuntime(spec, base_dir=base) as rt:
            kill_leftovers.append(str(rt.files.dir))
            assert not Path(marker).exists()
            assert [p.name for p in shm.iterdir()] == [f"crash-{os.getpid()}"]
        assert list(base.iterdir()) == []

    asyncio.run(restart())
