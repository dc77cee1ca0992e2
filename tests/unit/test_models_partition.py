"""Partitioned inference is exact: running the stages one after another (passing dicts)
gives the unpartitioned model's output, for many splits, dtypes and loading modes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from quartfaas.models import (
    build_pipeline,
    build_stage,
    make_weights,
    run_pipeline,
    stage_param_bytes,
    tokenizer_for,
    unpartitioned,
)
from quartfaas.models.stage import SyntheticStage
from quartfaas.models.torch_stage import TorchStage
from quartfaas.spec import PipelineSpec, load_spec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "quartfaas" / "examples"

TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "a", "Pipelines, stages!"]


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the box is shared; and it makes results reproducible
    yield
    torch.set_num_threads(before)


def tiny(
    weights_dir: Path,
    *,
    stages: int | None = 3,
    layers: list[tuple[int, int]] | None = None,
    dtype: str = "float32",
    seed: int = 0,
) -> PipelineSpec:
    count = len(layers) if layers is not None else stages
    assert count is not None
    stage_list: list[dict[str, Any]] = [{"name": f"s{i}"} for i in range(count)]
    if layers is not None:
        for stage, rng in zip(stage_list, layers, strict=True):
            stage["layers"] = list(rng)
    return parse_spec(
        {
            "name": "tiny",
            "model": {
                "kind": "bert",
                "layers": 4,
                "hidden_size": 32,
                "heads": 4,
                "vocab_size": 2048,
                "max_seq_len": 32,
                "seed": seed,
                "dtype": dtype,
            },
            "stages": stage_list,
            "weights_dir": str(weights_dir),
        }
    )


def reference(spec: PipelineSpec, inputs: dict[str, Any]) -> torch.Tensor:
    whole = build_stage(unpartitioned(spec), 0, weights="memory")
    return whole.forward(inputs)["embedding"]


@pytest.mark.parametrize(
    ("stages", "layers"),
    [
        (1, None),
        (2, None),
        (3, None),
        (5, None),  # layers + 1: the last stage holds only the head
        (None, [(0, 1), (1, 4)]),  # uneven, explicit
        (None, [(0, 3), (3, 4)]),
        (None, [(0, 1), (1, 2), (2, 3), (3, 4)]),
    ],
)
def test_staged_tiny_bert_equals_unpartitioned(
    tmp_path: Path, stages: int | None, layers: list[tuple[int, int]] | None
) -> None:
    spec = tiny(tmp_path, stages=stages, layers=layers)
    make_weights(spec)
    inputs = tokenizer_for(spec).encode(TEXTS).as_inputs()
    out = run_pipeline(build_pipeline(spec, weights="mmap"), inputs)
    want = reference(spec, inputs)
    assert set(out) == {"embedding"}
    assert out["embedding"].dtype == torch.float32
    assert out["embedding"].shape == (len(TEXTS), 32)
    torch.testing.assert_close(out["embedding"], want, rtol=0, atol=1e-6)


def test_stage_outputs_follow_the_contract(tmp_path: Path) -> None:
    spec = tiny(tmp_path, stages=3)
    make_weights(spec)
    stages = build_pipeline(spec)
    batch = tokenizer_for(spec).encode(TEXTS)
    x: dict[str, Any] = batch.as_inputs()
    assert stages[0].input_names == ("input_ids", "attention_mask")
    for stage in stages[:-1]:
        assert stage.output_names == ("hidden", "attention_mask")
        x = stage.forward(x)
        assert x["hidden"].dtype == torch.float32
        assert x["hidden"].shape == (*batch.input_ids.shape, 32)
        assert np.array_equal(x["attention_mask"].numpy(), batch.attention_mask)
    assert stages[-1].input_names == ("hidden", "attention_mask")
    assert stages[-1].output_names == ("embedding",)


def test_padding_does_not_change_a_texts_embedding(tmp_path: Path) -> None:
    spec = tiny(tmp_path, stages=2)
    make_weights(spec)
    stages = build_pipeline(spec)
    tok = tokenizer_for(spec)
    alone = run_pipeline(stages, tok.encode(["a"]).as_inputs())["embedding"]
    padded = run_pipeline(stages, tok.encode(["a", "a much longer text here"]).as_inputs())
    torch.testing.assert_close(padded["embedding"][0], alone[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["mmap", "copy", "memory"])
def test_loading_modes_give_identical_outputs(tmp_path: Path, mode: str) -> None:
    spec = tiny(tmp_path, stages=2)
    make_weights(spec)
    inputs = tokenizer_for(spec).encode(TEXTS).as_inputs()
    out = run_pipeline(build_pipeline(spec, weights=mode), inputs)  # type: ignore[arg-type]
    assert torch.equal(out["embedding"], reference(spec, inputs))


def test_bfloat16_tiny_model_runs_end_to_end(tmp_path: Path) -> None:
    spec = tiny(tmp_path, stages=3, dtype="bfloat16")
    make_weights(spec)
    stages = build_pipeline(spec)
    inputs = tokenizer_for(spec).encode(TEXTS).as_inputs()
    hidden = stages[0].forward(inputs)["hidden"]
    assert hidden.dtype == torch.bfloat16
    out = run_pipeline(stages, inputs)["embedding"]
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # Same seeded weights rounded to bfloat16: close to the float32 model, not equal.
    f32 = tiny(tmp_path / "f32", stages=1)
    want = reference(f32, inputs)
    assert not torch.equal(out, want)
    torch.testing.assert_close(out, want, rtol=0, atol=0.1)
    assert stage_param_bytes(spec, 0) * 2 == stage_param_bytes(tiny(tmp_path, stages=3), 0)


def test_stage_param_bytes_equals_saved_tensor_bytes(tmp_path: Path) -> None:
    for spec in (tiny(tmp_path / "a", stages=5), tiny(tmp_path / "b", stages=2, dtype="float16")):
        paths = make_weights(spec)
        for i, path in enumerate(paths):
            stage = build_stage(spec, i)
            assert isinstance(stage, TorchStage)
            saved = sum(t.numel() * t.element_size() for t in stage.module.state_dict().values())
            assert stage_param_bytes(spec, i) == saved == stage.param_bytes
            assert path.stat().st_size > saved  # plus the header
    assert stage_param_bytes(tiny(tmp_path, stages=5), 4) == 0  # head only


def test_example_inputs_are_valid_and_run(tmp_path: Path) -> None:
    spec = tiny(tmp_path, stages=2, dtype="bfloat16")
    for stage in build_pipeline(spec, weights="memory"):
        x = stage.example_inputs(batch=3, seq_len=8)
        stage.validate_inputs(x)
        out = stage.forward(x)
        assert set(out) == set(stage.output_names)
        long = stage.example_inputs(batch=1, seq_len=1000)  # capped at max_seq_len (32)
        assert long["attention_mask"].shape == (1, 32)


def test_synthetic_stages_pass_through_with_numpy(tmp_path: Path) -> None:
    spec = parse_spec(
        {
            "name": "syn",
            "model": {"kind": "synthetic", "hidden_size": 8, "max_seq_len": 16},
            "stages": [{"name": f"s{i}", "synthetic": {"work": "none"}} for i in range(3)],
        }
    )
    assert make_weights(spec) == []
    stages = build_pipeline(spec)
    assert all(isinstance(s, SyntheticStage) and s.param_bytes == 0 for s in stages)
    batch = tokenizer_for(spec).encode(["one two", "three"])
    first = stages[0].forward(batch.as_inputs())
    assert first["hidden"].dtype == np.float32
    assert first["hidden"].shape == (2, batch.input_ids.shape[1], 8)
    assert not first["hidden"].any()
    mid = stages[1].forward(first)
    assert mid["hidden"] is first["hidden"]
    out = run_pipeline(stages, batch.as_inputs())
    assert out["embedding"].dtype == np.float32 and out["embedding"].shape == (2, 8)
    # torch tensors are accepted too
    stages[1].forward({k: torch.from_numpy(v) for k, v in first.items()})
    assert stage_param_bytes(spec, 0) == 0


@pytest.mark.parametrize("name", ["tiny", "minilm", "bert-large", "bert-1g", "demo"])
def test_examples_validate_and_have_the_advertised_sizes(name: str) -> None:
    spec = load_spec(EXAMPLES / f"{name}.yaml")
    # Bundled examples keep weights in the user's cache, never inside the package.
    assert spec.weights_dir == (Path.home() / ".cache/quartfaas/weights" / name)
    sizes = [stage_param_bytes(spec, i) for i in range(spec.num_stages)]
    mib = 2**20
    if name == "tiny":
        assert spec.num_stages == 3 and sum(sizes) < 8 * mib
    elif name == "minilm":
        assert spec.num_stages == 3
    elif name == "demo":
        assert spec.num_stages == 3 and sizes[1] > sizes[0] + sizes[2]  # the bottleneck
    elif name == "bert-large":
        assert spec.num_stages >= 4 and all(200 * mib <= s <= 320 * mib for s in sizes)
    else:
        assert max(sizes) >= 2**30


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stage_moves_to_gpu_and_matches_cpu(tmp_path: Path) -> None:
    spec = tiny(tmp_path, stages=2)
    make_weights(spec)
    inputs = tokenizer_for(spec).encode(TEXTS).as_inputs()
    cpu = run_pipeline(build_pipeline(spec), inputs)["embedding"]
    gpu_stages = [s.to("cuda") for s in build_pipeline(spec)]
    out = run_pipeline(gpu_stages, inputs)["embedding"]
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, cpu, rtol=1e-4, atol=1e-4)
