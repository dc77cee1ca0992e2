"""A backend that drives a remote gateway through its OpenFaaS REST API.

``quartfaas control --gateway URL --prometheus URL`` runs the controller apart from the
gateway (as the prototype's scaler ran beside OpenFaaS): it reads metrics from Prometheus
and scales through ``POST /system/scale-function/{name}``. Any gateway speaking that API
works, quartfaas's own or OpenFaaS's.

The API works in replica *counts*, not replicas: ``list_replicas`` reports the counts as
anonymous replicas (``availableReplicas`` ready, the rest starting) and ``scale_to``
sets a count in one call (``reconcile`` uses it). CPU cannot be resized through this API:
``set_cpu`` says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from quartfaas.control.backend import CpuLever, ReconcilePlan, ReplicaInfo, ReplicaState
from quartfaas.errors import BackendError


class GatewayBackend:
    """``Backend`` over the OpenFaaS API of a gateway at ``base_url``."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: tuple[str, str] | None = None,
        timeout_s: float = 5.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.Client(timeout=timeout_s, auth=auth)

    def _status(self, name: str) -> Mapping[str, Any]:
        try:
            r = self._client.get(f"{self.base_url}/system/function/{name}")
        except httpx.HTTPError as exc:
            raise BackendError(f"gateway {self.base_url} unreachable: {exc}") from None
        if r.status_code != 200:
            raise BackendError(f"gateway answered {r.status_code} for {name}: {r.text[:200]}")
        data = r.json()
        if not isinstance(data, dict):
            raise BackendError(f"gateway sent a malformed status for {name}")
        return data

    def list_replicas(self, stage: str | None = None) -> list[ReplicaInfo]:
        if stage is None:
            raise BackendError("the gateway backend lists replicas per function only")
        st = self._status(stage)
        total, ready = int(st.get("replicas", 0)), int(st.get("availableReplicas", 0))
        return [
            ReplicaInfo(
                replica_id=f"{stage}#{i}",
                stage=stage,
                state=ReplicaState.READY if i < ready else ReplicaState.STARTING,
                host="remote",
            )
            for i in range(max(total, ready))
        ]

    def scale_to(self, stage: str, replicas: int) -> ReconcilePlan:
        current = len(self.list_replicas(stage))
        try:
            r = self._client.post(
                f"{self.base_url}/system/scale-function/{stage}",
                json={"serviceName": stage, "replicas": replicas},
            )
        except httpx.HTTPError as exc:
            raise BackendError(f"gateway {self.base_url} unreachable: {exc}") from None
        if r.status_code >= 300:
            raise BackendError(f"scaling {stage} to {replicas} failed: {r.status_code} {r.text}")
        stop = tuple(f"{stage}#{i}" for i in range(replicas, current))
        return ReconcilePlan(start=max(0, replicas - current), stop=stop)

    def start_replica(self, stage: str) -> ReplicaInfo:
        n = len(self.list_replicas(stage))
        self.scale_to(stage, n + 1)
        return ReplicaInfo(f"{stage}#{n}", stage, ReplicaState.STARTING, host="remote")

    def stop_replica(self, replica_id: str, *, drain: bool = True) -> None:
        stage = replica_id.split("#", 1)[0]
        n = len(self.list_replicas(stage))
        self.scale_to(stage, max(0, n - 1))

    def set_cpu(self, replica_id: str, cpus: float) -> CpuLever:
        raise BackendError("CPU cannot be resized through the OpenFaaS gateway API")

    def close(self) -> None:
        self._client.close()
