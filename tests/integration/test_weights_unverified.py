"""Weights without a manifest entry, with real workers (issue #13, item 9): refused unless
the spec says ``verify: false``; then a stage whose output is NaN answers a clear JSON
502, never a reply with bare ``NaN``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from helpers import tiny_bert_spec
from quartfaas.errors import BackendError
from quartfaas.runtime import EmbeddedRuntime

pytestmark = pytest.mark.timeout(240)


@pytest.mark.parametrize("cache", [True, False], ids=["template", "cold"])
def test_weights_without_a_manifest_are_refused(
    cache: bool, tmp_path: Path, kill_leftovers: list[str]
) -> None:
    from quartfaas.models import make_weights

    spec = tiny_bert_spec(tmp_path, name=f"nomf{int(cache)}", stages=2, cache={"enabled": cache})
    make_weights(spec)
    (tmp_path / "manifest.json").unlink()
    kill_leftovers.append(spec.stages[0].name)

    async def main() -> None:
        rt = EmbeddedRuntime(spec)
        kill_leftovers.append(str(rt.files.dir))
        with pytest.raises(BackendError) as err:
            await rt.start()
        await rt.stop()
        assert "manifest" in str(err.value), err.value

    asyncio.run(main())


def test_unverified_nan_weights_answer_a_json_502(
    tmp_path: Path, kill_leftovers: list[str]
) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from quartfaas.models import make_weights

    spec = tiny_bert_spec(tmp_path, name="nanw", stages=2, verify=False)
    make_weights(spec)
    (tmp_path / "manifest.json").unlink()
    last = spec.stage_weights_path(1)
    with safe_open(str(last), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k).clone() for k in f.keys()}  # noqa: SIM118
    name = next(k for k in sorted(tensors) if tensors[k].dtype == torch.float32)
    tensors[name].fill_(float("nan"))  # what flipped exponent bits can do
    save_file(tensors, str(last), metadata=meta)
    kill_leftovers.append("nanw-s")

    async def main() -> None:
        async with (
            EmbeddedRuntime(spec) as rt,
            httpx.AsyncClient(base_url=rt.url, timeout=60.0) as c,
        ):
            kill_leftovers.append(str(rt.files.dir))
            r = await c.post("/function/nanw", json={"inputs": "hello world"})
            json.loads(r.text)  # valid JSON: no bare NaN anywhere
            assert r.status_code == 502, r.text
            err = r.json()["error"]
            assert "nanw-s1" in err and "non-finite" in err and "weights" in err
            reg = rt.gateway.metrics.registry
            assert (
                reg.get_sample_value(
                    "gateway_function_invocation_total",
                    {"function_name": "nanw.openfaas-fn", "code": "502"},
                )
                == 1
            )

    asyncio.run(main())
