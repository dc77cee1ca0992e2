"""CPU used by processes, read from /proc (the compensator's CPU-bound signal)."""

from __future__ import annotations

import os
import time

from quartfaas.metrics.proc_cpu import ProcessCpuMeter, cpu_seconds


def test_cpu_seconds_of_a_busy_process_grow() -> None:
    pid = os.getpid()
    before = cpu_seconds(pid)
    assert before is not None
    deadline = time.monotonic() + 10
    while (cpu_seconds(pid) or 0) - before < 0.2 and time.monotonic() < deadline:
        sum(range(10_000))
    assert (cpu_seconds(pid) or 0) - before >= 0.2


def test_meter_needs_two_readings_and_forgets_gone_processes() -> None:
    meter = ProcessCpuMeter()
    pid = os.getpid()
    assert meter.sample([pid], now=100.0) == []  # first reading: no interval yet
    start = cpu_seconds(pid) or 0.0
    while (cpu_seconds(pid) or 0) - start < 0.1:
        sum(range(10_000))
    used = meter.sample([pid], now=101.0)  # pretend 1 s passed
    assert len(used) == 1 and used[0] >= 0.1
    assert meter.sample([2**22 + 12345], now=102.0) == []  # no such process
    assert meter.sample([pid], now=103.0) == []  # it was forgotten when absent
