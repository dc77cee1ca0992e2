"""A Prometheus server on loopback for integration tests and local runs.

``PrometheusServer`` starts Debian's ``/usr/bin/prometheus`` (path configurable) on
127.0.0.1 with a free port, a temporary data directory and a generated config
(``prometheus_config``), waits for ``/-/ready`` with a deadline and stops it (SIGTERM,
then SIGKILL) on exit. The collector that queries it is ``metrics/prometheus.py``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import yaml

from quartfaas.errors import QuartfaasError
from quartfaas.metrics.promql import duration


class PrometheusError(QuartfaasError):
    """A Prometheus server could not be started or answered nonsense (dev/test helper)."""


class PrometheusNotFound(PrometheusError):
    """The ``prometheus`` binary is not installed where it was looked for."""


def prometheus_config(
    targets: Sequence[str],
    scrape_interval_s: float = 1.0,
    *,
    job: str = "quartfaas",
    metrics_path: str = "/metrics",
    scrape_timeout_s: float | None = None,
) -> str:
    """A minimal ``prometheus.yml`` scraping ``targets`` (``host:port``) every interval."""
    if not targets:
        raise ValueError("prometheus_config needs at least one target (host:port)")
    if scrape_interval_s <= 0:
        raise ValueError(f"scrape_interval_s ({scrape_interval_s}) must be > 0")
    # Prometheus refuses a scrape timeout longer than the interval (its default is 10 s).
    timeout = min(scrape_interval_s, 10.0) if scrape_timeout_s is None else scrape_timeout_s
    if timeout > scrape_interval_s:
        raise ValueError(
            f"scrape_timeout_s ({timeout}) must be <= scrape_interval_s ({scrape_interval_s})"
        )
    config = {
        "global": {
            "scrape_interval": duration(scrape_interval_s),
            "scrape_timeout": duration(timeout),
            "evaluation_interval": duration(scrape_interval_s),
        },
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": metrics_path,
                "static_configs": [{"targets": list(targets)}],
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """``/usr/bin/prometheus`` on loopback with a temp data dir: ``async with`` it.

    Readiness is ``GET /-/ready`` polled until ``ready_timeout_s``; a port lost to a race
    is retried with another. ``stop()`` (also on context exit) sends SIGTERM, then SIGKILL
    after ``grace_s``, and removes the data dir. Only the process it started is signalled.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        scrape_interval_s: float = 1.0,
        binary: str | None = None,
        host: str = "127.0.0.1",
        job: str = "quartfaas",
        ready_timeout_s: float = 30.0,
        grace_s: float = 3.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        found = shutil.which(binary or "prometheus") or (
            "/usr/bin/prometheus"
            if binary is None and os.access("/usr/bin/prometheus", os.X_OK)
            else None
        )
        if found is None:
            raise PrometheusNotFound(
                f"prometheus binary {binary or 'prometheus'!r} not found: install Debian's "
                "'prometheus' package (apt-get install prometheus) or pass binary=<path>"
            )
        self.binary = found
        self.config = prometheus_config(targets, scrape_interval_s, job=job)
        self.host = host
        self.ready_timeout_s = ready_timeout_s
        self.grace_s = grace_s
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: Path | None = None
        self.url = ""

    async def __aenter__(self) -> PrometheusServer:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def _launch(self, port: int) -> subprocess.Popen[bytes]:
        assert self.dir is not None
        cfg = self.dir / "prometheus.yml"
        cfg.write_text(self.config, encoding="utf-8")
        log = (self.dir / "prometheus.log").open("ab")
        try:
            return subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address={self.host}:{port}",
                    *self.extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in a test terminal is the test's, not its
            )
        finally:
            log.close()

    def log_tail(self, chars: int = 1500) -> str:
        if self.dir is None or not (self.dir / "prometheus.log").exists():
            return ""
        return (self.dir / "prometheus.log").read_text(errors="replace")[-chars:]

    async def start(self) -> str:
        """Start and wait until ready; returns the base URL."""
        self.dir = Path(tempfile.mkdtemp(prefix="quartfaas-prom-"))
        deadline = time.monotonic() + self.ready_timeout_s
        async with httpx.AsyncClient(timeout=1.0) as client:
            for _ in range(3):
                port = _free_port(self.host)
                self.proc = self._launch(port)
                self.url = f"http://{self.host}:{port}"
                while self.proc.poll() is None:
                    if time.monotonic() > deadline:
                        await self.stop()
                        raise PrometheusError(
                            f"prometheus at {self.url} not ready within "
                            f"{self.ready_timeout_s:g}s; log tail:\n{self.log_tail()}"
                        )
                    try:
                        if (await client.get(f"{self.url}/-/ready")).status_code == 200:
                            return self.url
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
                if "address already in use" not in self.log_tail():
                    break  # a real failure, not a lost port race
        code = self.proc.returncode if self.proc else None
        tail = self.log_tail()
        await self.stop()
        raise PrometheusError(f"prometheus exited with code {code}; log tail:\n{tail}")

    async def stop(self) -> None:
        """SIGTERM, SIGKILL after ``grace_s``, reap, remove the data dir. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            end = time.monotonic() + self.grace_s
            while proc.poll() is None and time.monotonic() < end:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
