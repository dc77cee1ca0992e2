"""all-MiniLM-L6-v2: staged == unpartitioned == sentence-transformers, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

from quartfaas.models import (
    build_pipeline,
    build_stage,
    make_weights,
    run_pipeline,
    stage_param_bytes,
    tokenizer_for,
    unpartitioned,
)
from quartfaas.models.minilm import hf_sources, model_dir
from quartfaas.models.tokenize import MiniLMTokenizer
from quartfaas.spec import PipelineSpec, parse_spec

TEXTS = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "Serverless pipelines split large models into stages.",
    "a",
]


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def minilm(weights_dir: Path, layers: list[tuple[int, int]], **model: Any) -> PipelineSpec:
    return parse_spec(
        {
            "name": "minilm",
            "model": {"kind": "minilm", **model},
            "stages": [{"name": f"m{i}", "layers": list(r)} for i, r in enumerate(layers)],
            "weights_dir": str(weights_dir),
        }
    )


@pytest.fixture(scope="module")
def sentence_transformers_embeddings() -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir()), device="cpu")
    return torch.from_numpy(model.encode(TEXTS, convert_to_numpy=True))


@pytest.fixture(scope="module")
def whole_embeddings() -> torch.Tensor:
    spec = minilm(Path("unused"), [(0, 6)])
    inputs = tokenizer_for(spec).encode(TEXTS).as_inputs()
    return build_stage(unpartitioned(spec), 0, weights="memory").forward(inputs)["embedding"]


def test_unpartitioned_matches_sentence_transformers(
    whole_embeddings: torch.Tensor, sentence_transformers_embeddings: torch.Tensor
) -> None:
    torch.testing.assert_close(
        whole_embeddings, sentence_transformers_embeddings, rtol=0, atol=1e-5
    )
    norms = whole_embeddings.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(len(TEXTS)), rtol=0, atol=1e-5)


def test_staged_from_files_matches_unpartitioned_and_sentence_transformers(
    tmp_path: Path,
    whole_embeddings: torch.Tensor,
    sentence_transformers_embeddings: torch.Tensor,
) -> None:
    spec = minilm(tmp_path, [(0, 1), (1, 4), (4, 6)])
    paths = make_weights(spec)
    for i, path in enumerate(paths):  # the file is its parameters plus a small header
        assert stage_param_bytes(spec, i) < path.stat().st_size < stage_param_bytes(spec, i) + 8192
    inputs = tokenizer_for(spec).encode(TEXTS).as_inputs()
    out = run_pipeline(build_pipeline(spec, weights="mmap"), inputs)["embedding"]
    assert out.dtype == torch.float32 and out.shape == (len(TEXTS), 384)
    torch.testing.assert_close(out, whole_embeddings, rtol=0, atol=1e-6)
    torch.testing.assert_close(out, sentence_transformers_embeddings, rtol=0, atol=1e-5)


def test_sliced_tensors_are_the_checkpoints(tmp_path: Path) -> None:
    spec = minilm(tmp_path, [(0, 3), (3, 6)])
    paths = make_weights(spec)
    hf_path = model_dir() / "model.safetensors"
    with safe_open(str(hf_path), framework="pt") as hf, safe_open(str(paths[1]), "pt") as ours:
        for name in ours.keys():  # noqa: SIM118
            want = torch.cat([hf.get_tensor(s) for s in hf_sources(name)], dim=0)
            assert torch.equal(ours.get_tensor(name), want), name
        assert {n.split(".")[1] for n in ours.keys()} == {"3", "4", "5"}  # noqa: SIM118


def test_bfloat16_minilm_is_close(
    tmp_path: Path, sentence_transformers_embeddings: torch.Tensor
) -> None:
    spec = minilm(tmp_path, [(0, 3), (3, 6)], dtype="bfloat16")
    inputs = tokenizer_for(spec).encode(TEXTS).as_inputs()
    out = run_pipeline(build_pipeline(spec, weights="memory"), inputs)["embedding"]
    assert out.dtype == torch.float32
    cos = (out * sentence_transformers_embeddings).sum(dim=1)
    assert (cos > 0.99).all()


def test_minilm_tokenizer_matches_sentence_transformers() -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(model_dir()))
    ours = MiniLMTokenizer(max_seq_len=128)
    batch = ours.encode(TEXTS)
    want = reference(TEXTS, padding=True, truncation=True, max_length=128, return_tensors="np")
    assert np.array_equal(batch.input_ids, want["input_ids"])
    assert np.array_equal(batch.attention_mask, want["attention_mask"])
    assert batch.input_ids.dtype == np.int64 and batch.attention_mask.dtype == np.int64
    assert ours.decode(batch.input_ids[1]) == TEXTS[1].lower()


def test_minilm_tokenizer_truncates_and_pads_to_the_longest() -> None:
    tok = MiniLMTokenizer(max_seq_len=8)
    batch = tok.encode(["one", "one two three four five six seven eight nine ten"])
    assert batch.input_ids.shape == (2, 8)
    assert batch.input_ids[1, 0] == 101 and batch.input_ids[1, -1] == 102
    assert batch.attention_mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert tok.decode(batch.input_ids[1]) == "one two three four five six"
    short = MiniLMTokenizer(max_seq_len=128).encode(["one", "two"])
    assert short.input_ids.shape == (2, 3)  # padded to the batch's longest, not to 128
    assert MiniLMTokenizer(max_seq_len=1).encode(["one two"]).input_ids.tolist() == [[101]]
