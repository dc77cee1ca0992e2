"""CPU levers against fake cgroup trees in tmp_path (the real kernel: tests/integration)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from quartfaas.backends.cpu import (
    CgroupV1Cpu,
    CgroupV2Cpu,
    CpuActuator,
    LeverReport,
    cgroup_for,
    detect_cpu_lever,
    set_worker_threads,
    threads_for_quota,
)
from quartfaas.control.backend import CpuLever, ReplicaInfo, ReplicaState
from quartfaas.errors import BackendError


def _files(d: Path, **files: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name.replace("__", ".")).write_text(text)
    return d


def fake_v1(root: Path, name: str = "cpu") -> Path:
    """A hybrid host like this one: v1 ``cpu`` plus a v2 tree without a cpu controller."""
    _files(root / "unified", cgroup__controllers="hugetlb\n", cgroup__procs="")
    return _files(
        root / name,
        cpu__cfs_quota_us="-1\n",
        cpu__cfs_period_us="100000\n",
        cgroup__procs="1\n",
        cpu__stat="nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
    )


def fake_v2(root: Path, controllers: str = "cpuset cpu io memory pids") -> Path:
    return _files(root, cgroup__controllers=controllers + "\n", cgroup__subtree_control="")


def fake_proc(proc: Path, pid: int, cgroup: str, utime: int = 0, stime: int = 0) -> None:
    fields = ["S", *["0"] * 10, str(utime), str(stime), *["0"] * 20]
    _files(proc / str(pid), cgroup=cgroup, stat=f"{pid} (py thon) " + " ".join(fields))


# --- detection ----------------------------------------------------------------------------


def test_detects_v1_when_v2_has_no_cpu_controller(tmp_path: Path) -> None:
    mount = fake_v1(tmp_path)
    report = detect_cpu_lever(tmp_path, environ={})
    assert report.lever is CpuLever.CGROUP_V1
    assert report.path == mount / "quartfaas" and report.path.is_dir()
    why = dict(report.unavailable)
    assert "no cpu controller" in why[CpuLever.CGROUP_V2] and "hugetlb" in why[CpuLever.CGROUP_V2]
    assert "KUBERNETES_SERVICE_HOST" in why[CpuLever.K8S_RESIZE]
    assert "cgroup-v1" in report.describe()


@pytest.mark.parametrize("name", ["cpu,cpuacct", "cpuacct,cpu"])
def test_detects_a_co_mounted_v1_controller(tmp_path: Path, name: str) -> None:
    fake_v1(tmp_path, name)
    report = detect_cpu_lever(tmp_path, environ={})
    assert report.lever is CpuLever.CGROUP_V1 and report.mount == tmp_path / name


def test_detects_v2_with_a_cpu_controller_and_enables_it_below(tmp_path: Path) -> None:
    fake_v2(tmp_path)
    report = detect_cpu_lever(tmp_path, environ={})
    assert report.lever is CpuLever.CGROUP_V2 and report.path == tmp_path / "quartfaas"
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu"
    assert (tmp_path / "quartfaas" / "cgroup.subtree_control").read_text() == "+cpu"


def test_v2_in_a_delegated_subtree(tmp_path: Path) -> None:
    fake_v2(tmp_path, controllers="memory")  # the root does not offer cpu ...
    _files(tmp_path / "user.slice" / "me", cgroup__controllers="cpu memory\n")  # ... this does
    env = {"QUARTFAAS_CGROUP_V2_BASE": "/user.slice/me"}
    report = detect_cpu_lever(tmp_path, environ=env)
    assert report.lever is CpuLever.CGROUP_V2
    assert report.path == tmp_path / "user.slice" / "me" / "quartfaas"
    cg = cgroup_for(report)
    assert isinstance(cg, CgroupV2Cpu) and cg.mount == tmp_path


def test_falls_back_to_threads_with_a_reason_for_each_lever(tmp_path: Path) -> None:
    report = detect_cpu_lever(tmp_path, environ={})
    assert report.lever is CpuLever.THREADS and report.path is None
    why = dict(report.unavailable)
    assert "no cgroup v2 hierarchy" in why[CpuLever.CGROUP_V2]
    assert "no cgroup v1 cpu controller" in why[CpuLever.CGROUP_V1]
    assert cgroup_for(report) is None


def test_unwritable_controller_falls_back_to_threads(tmp_path: Path) -> None:
    mount = fake_v1(tmp_path)
    (mount / "quartfaas").write_text("")  # mkdir fails, as on a read-only cgroupfs
    report = detect_cpu_lever(tmp_path, environ={})
    assert report.lever is CpuLever.THREADS
    assert "cannot create" in dict(report.unavailable)[CpuLever.CGROUP_V1]


def test_environment_can_force_or_disable_levers(tmp_path: Path) -> None:
    fake_v1(tmp_path)
    forced = detect_cpu_lever(tmp_path, environ={"QUARTFAAS_CPU_LEVER": "threads"})
    assert forced.lever is CpuLever.THREADS
    assert "not chosen" in dict(forced.unavailable)[CpuLever.CGROUP_V1]
    off = detect_cpu_lever(tmp_path, environ={"QUARTFAAS_CPU_LEVER": "none"})
    assert off.lever is CpuLever.NONE
    odd = detect_cpu_lever(tmp_path, environ={"QUARTFAAS_CPU_LEVER": "turbo"})
    assert odd.lever is CpuLever.CGROUP_V1 and "unknown" in odd.describe()
    k8s = detect_cpu_lever(tmp_path, environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    assert "Kubernetes backend" in dict(k8s.unavailable)[CpuLever.K8S_RESIZE]


def test_detection_without_probe_creates_nothing(tmp_path: Path) -> None:
    mount = fake_v1(tmp_path)
    report = detect_cpu_lever(tmp_path, environ={}, probe=False)
    assert report.lever is CpuLever.CGROUP_V1 and not (mount / "quartfaas").exists()


# --- cgroup v1 / v2 groups ------------------------------------------------------------------


def test_v1_group_attach_quota_stat(tmp_path: Path) -> None:
    mount = fake_v1(tmp_path / "cg")
    proc = tmp_path / "proc"
    fake_proc(proc, 4242, "2:cpuacct:/\n1:cpu:/elsewhere\n0::/\n", utime=150, stime=50)
    _files(mount / "elsewhere", cgroup__procs="")
    cg = CgroupV1Cpu(mount, proc_root=proc)
    assert cg.attach("stage-1/r#3", 4242).ok
    group = mount / "quartfaas" / "stage-1_r_3"  # the id is made a safe directory name
    assert (group / "cgroup.procs").read_text() == "4242"
    assert cg.set_quota("stage-1/r#3", 1.5).ok
    assert (group / "cpu.cfs_period_us").read_text() == "100000"
    assert (group / "cpu.cfs_quota_us").read_text() == "150000"
    assert cg.set_quota("stage-1/r#3", None).ok
    assert (group / "cpu.cfs_quota_us").read_text() == "-1"
    assert cg.set_quota("stage-1/r#3", 0.001).ok  # the kernel's 1 ms floor
    assert (group / "cpu.cfs_quota_us").read_text() == "1000"
    bad = cg.set_quota("stage-1/r#3", 0.0)
    assert not bad.ok and "> 0" in bad.message

    (group / "cpu.stat").write_text("nr_periods 40\nnr_throttled 12\nthrottled_time 250000000\n")
    stat = cg.read_stat("stage-1/r#3")
    assert (stat.nr_periods, stat.nr_throttled, stat.throttled_s) == (40, 12, 0.25)
    assert stat.usage_s == pytest.approx(2.0)  # (150 + 50) ticks at 100 Hz
    assert stat.usage_source == "/proc/<pid>/stat"

    # Removal moves the pid back where it came from first. (A fake directory keeps its
    # files, so rmdir fails here; on cgroupfs it succeeds: tests/integration.)
    gone = cg.remove_group("stage-1/r#3")
    assert (mount / "elsewhere" / "cgroup.procs").read_text() == "4242"
    assert not gone.ok and "cannot remove" in gone.message


def test_v1_cpuacct_usage_is_preferred_when_co_mounted(tmp_path: Path) -> None:
    cg = CgroupV1Cpu(fake_v1(tmp_path, "cpu,cpuacct"))
    assert cg.create_group("r1").ok
    _files(cg.group_dir("r1"), cpu__stat="nr_throttled 1\n", cpuacct__usage="1500000000\n")
    stat = cg.read_stat("r1")
    assert stat.usage_s == 1.5 and stat.usage_source == "cpuacct.usage"


def test_removing_an_empty_group_and_the_parent(tmp_path: Path) -> None:
    mount = fake_v1(tmp_path)
    cg = CgroupV1Cpu(mount)
    assert cg.create_group("r1").ok and cg.group_dir("r1").is_dir()
    assert cg.remove_group("r1").ok and not cg.group_dir("r1").exists()
    assert "already gone" in cg.remove_group("r1").message
    assert cg.remove_parent().ok and not (mount / "quartfaas").exists()


def test_pid_without_a_known_origin_goes_back_to_the_root(tmp_path: Path) -> None:
    mount = fake_v1(tmp_path / "cg")
    cg = CgroupV1Cpu(mount, proc_root=tmp_path / "proc")  # no /proc entry for the pid
    assert cg.attach("r1", 77).ok
    cg.remove_group("r1")
    assert (mount / "cgroup.procs").read_text() == "77"


def test_v2_quota_and_stat(tmp_path: Path) -> None:
    root = fake_v2(tmp_path)
    cg = CgroupV2Cpu(root)
    assert cg.attach("r1", 99).ok
    group = root / "quartfaas" / "r1"
    assert cg.set_quota("r1", 0.5).ok
    assert (group / "cpu.max").read_text() == "50000 100000"
    assert cg.set_quota("r1", None).ok
    assert (group / "cpu.max").read_text() == "max 100000"
    (group / "cpu.stat").write_text(
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
        "nr_periods 10\nnr_throttled 4\nthrottled_usec 300000\n"
    )
    stat = cg.read_stat("r1")
    assert (stat.usage_s, stat.nr_throttled, stat.throttled_s) == (2.5, 4, 0.3)


def test_operations_on_a_missing_tree_return_reasons_not_exceptions(tmp_path: Path) -> None:
    cg = CgroupV1Cpu(tmp_path / "nowhere")
    assert not cg.attach("r1", 1).ok
    assert "attach the replica first" in cg.set_quota("r1", 1.0).message
    assert not cg.read_stat("r1").ok and "cpu.stat" in cg.read_stat("r1").error
    assert cg.remove_group("r1").ok
    assert cg.pids("r1") == []


# --- threads ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cores", "threads"), [(0.3, 1), (1.0, 1), (1.99, 1), (2.0, 2), (2 - 1e-12, 2), (3.7, 3)]
)
def test_threads_for_quota(cores: float, threads: int) -> None:
    assert threads_for_quota(cores) == threads


def test_set_worker_threads_posts_the_count() -> None:
    seen: list[tuple[str, dict[str, int]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), json.loads(request.content)))
        return httpx.Response(200, json={"threads": 3, "previous": 1})

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        assert set_worker_threads("http://127.0.0.1:9/", 3, 1.0, client=client) == 3
    assert seen == [("http://127.0.0.1:9/control/threads", {"threads": 3})]


@pytest.mark.parametrize(
    "response",
    [httpx.Response(500, text="boom"), httpx.Response(200, text="not json")],
)
def test_set_worker_threads_errors_are_backend_errors(response: httpx.Response) -> None:
    with (
        httpx.Client(transport=httpx.MockTransport(lambda _: response)) as client,
        pytest.raises(BackendError, match="/control/threads"),
    ):
        set_worker_threads("http://w", 2, 1.0, client=client)


# --- the actuator ------------------------------------------------------------------------------


class Recorder:
    def __init__(self, cg: CgroupV1Cpu | None, fail: bool = False) -> None:
        self.cg, self.fail = cg, fail
        self.log: list[str] = []

    def set_threads(self, address: str, n: int, timeout_s: float) -> int:
        quota = None
        if self.cg is not None and (self.cg.group_dir("r1") / "cpu.cfs_quota_us").exists():
            quota = (self.cg.group_dir("r1") / "cpu.cfs_quota_us").read_text()
        self.log.append(f"threads={n} quota={quota}")
        if self.fail:
            raise BackendError("worker down")
        return n


def _v1_actuator(tmp_path: Path, fail: bool = False) -> tuple[CpuActuator, Recorder]:
    report = detect_cpu_lever(fake_v1(tmp_path / "cg").parent, environ={})
    cg = cgroup_for(report)
    assert isinstance(cg, CgroupV1Cpu)
    rec = Recorder(cg, fail)
    return CpuActuator(report, cg, set_threads=rec.set_threads), rec


def test_actuator_raises_quota_before_threads_and_lowers_threads_first(tmp_path: Path) -> None:
    act, rec = _v1_actuator(tmp_path)
    up = act.apply("r1", 2.5, pid=123, address="http://w", previous_cores=1.0)
    assert up.lever is CpuLever.CGROUP_V1 and up.threads == 2
    assert rec.log == ["threads=2 quota=250000"]  # the quota was already in place
    down = act.apply("r1", 1.0, pid=123, address="http://w", previous_cores=2.5)
    assert down.threads == 1
    assert rec.log[-1] == "threads=1 quota=250000"  # threads cut before the quota
    assert (act.cgroup.group_dir("r1") / "cpu.cfs_quota_us").read_text() == "100000"  # type: ignore[union-attr]


def test_actuator_keeps_the_quota_when_the_worker_has_no_thread_endpoint(tmp_path: Path) -> None:
    act, _ = _v1_actuator(tmp_path, fail=True)
    done = act.apply("r1", 2.0, pid=5, address="http://w")
    assert done.lever is CpuLever.CGROUP_V1 and done.threads is None
    assert any("worker down" in n for n in done.notes)


def test_actuator_falls_back_to_threads_when_the_cgroup_fails(tmp_path: Path) -> None:
    act, _ = _v1_actuator(tmp_path)
    act.cgroup.parent_dir = tmp_path / "missing" / "quartfaas"  # type: ignore[union-attr]
    done = act.apply("r1", 3.0, pid=5, address="http://w")
    assert done.lever is CpuLever.THREADS and done.threads == 3
    assert any("cannot create" in n for n in done.notes)


def test_threads_only_actuator_and_set_cpu(tmp_path: Path) -> None:
    calls: list[int] = []

    def ok(address: str, n: int, timeout_s: float) -> int:
        calls.append(n)
        return n

    report = LeverReport(CpuLever.THREADS)
    act = CpuActuator(report, None, set_threads=ok)
    info = ReplicaInfo("r1", "s0", ReplicaState.READY, address="http://w", pid=1, cpu=1.0)
    assert act.set_cpu(info, 2.0) is CpuLever.THREADS and calls == [2]
    assert act.attach("r1", 1).ok is False and act.release("r1").ok
    no_address = ReplicaInfo("r2", "s0", ReplicaState.READY)
    with pytest.raises(BackendError, match="no address"):
        act.set_cpu(no_address, 2.0)
    off = CpuActuator(LeverReport(CpuLever.NONE), None, set_threads=ok)
    assert off.apply("r1", 2.0, address="http://w").lever is CpuLever.NONE
