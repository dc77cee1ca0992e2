"""Stage input checks (ModelInputError with clear messages) and the tokenizers."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch

from quartfaas.errors import ModelInputError
from quartfaas.models import build_stage, tokenizer_for
from quartfaas.models.tokenize import SimpleTokenizer
from quartfaas.spec import PipelineSpec, parse_spec


def tiny(kind: str = "bert", dtype: str = "float32") -> PipelineSpec:
    model: dict[str, Any]
    stage_extra: dict[str, Any] = {}
    if kind == "bert":
        model = {
            "kind": "bert",
            "layers": 2,
            "hidden_size": 16,
            "heads": 2,
            "vocab_size": 3000,
            "max_seq_len": 12,
            "dtype": dtype,
        }
    else:
        model = {"kind": "synthetic", "hidden_size": 16, "max_seq_len": 12}
        stage_extra = {"synthetic": {"work": "none"}}
    return parse_spec(
        {
            "name": "t",
            "model": model,
            "stages": [{"name": "a", **stage_extra}, {"name": "b", **stage_extra}],
        }
    )


def ids_inputs(b: int = 2, t: int = 5) -> dict[str, Any]:
    return {
        "input_ids": np.full((b, t), 1500, dtype=np.int64),
        "attention_mask": np.ones((b, t), dtype=np.int64),
    }


def hidden_inputs(b: int = 2, t: int = 5, h: int = 16) -> dict[str, Any]:
    return {
        "hidden": torch.zeros(b, t, h),
        "attention_mask": torch.ones(b, t, dtype=torch.int64),
    }


@pytest.fixture(params=["bert", "synthetic"])
def stages(request: pytest.FixtureRequest) -> list[Any]:
    spec = tiny(request.param)
    return [build_stage(spec, i, weights="memory") for i in range(2)]


BAD_FIRST: list[tuple[str, Any, str]] = [
    ("missing", lambda x: x.pop("attention_mask"), r"missing \['attention_mask'\]"),
    (
        "extra",
        lambda x: x.update(token_type_ids=x["input_ids"]),
        r"unexpected \['token_type_ids'\]",
    ),
    (
        "dtype",
        lambda x: x.update(input_ids=x["input_ids"].astype(np.int32)),
        r"'input_ids' must be int64, got int32",
    ),
    (
        "mask dtype",
        lambda x: x.update(attention_mask=x["attention_mask"].astype(np.float32)),
        r"'attention_mask' must be int64, got float32",
    ),
    (
        "rank",
        lambda x: x.update(input_ids=x["input_ids"][0]),
        r"'input_ids' must have shape \[batch, seq_len\], got \[5\]",
    ),
    (
        "batch",
        lambda x: x.update(attention_mask=x["attention_mask"][:1]),
        r"'attention_mask' has shape \[1, 5\].*batch 2.*must agree",
    ),
    (
        "seq",
        lambda x: x.update(attention_mask=x["attention_mask"][:, :3]),
        r"seq_len 5.*must agree",
    ),
    (
        "vocab high",
        lambda x: x["input_ids"].__setitem__((0, 1), 40000),
        r"token id 40000.*outside the vocabulary \[0, \d+\)",
    ),
    ("vocab low", lambda x: x["input_ids"].__setitem__((1, 1), -1), r"token id -1.*outside"),
    (
        "mask values",
        lambda x: x["attention_mask"].__setitem__((0, 0), 2),
        r"'attention_mask' must hold only 0 and 1",
    ),
    (
        "not a tensor",
        lambda x: x.update(input_ids=[[1, 2]]),
        r"'input_ids' must be a tensor or array",
    ),
]


@pytest.mark.parametrize(("what", "damage", "message"), BAD_FIRST, ids=[b[0] for b in BAD_FIRST])
def test_bad_first_stage_inputs(stages: list[Any], what: str, damage: Any, message: str) -> None:
    x = ids_inputs()
    damage(x)
    with pytest.raises(ModelInputError, match=message) as err:
        stages[0].forward(x)
    assert "stage 'a'" in str(err.value)


def test_first_stage_rejects_too_long_and_empty(stages: list[Any]) -> None:
    with pytest.raises(ModelInputError, match=r"seq_len 13 exceeds the model's max_seq_len 12"):
        stages[0].forward(ids_inputs(t=13))
    with pytest.raises(ModelInputError, match=r"empty input"):
        stages[0].forward(ids_inputs(b=0))
    with pytest.raises(ModelInputError, match=r"takes a mapping"):
        stages[0].forward([1, 2, 3])


BAD_LATER: list[tuple[str, Any, str]] = [
    (
        "ids instead",
        lambda x: x.update(input_ids=x.pop("hidden")),
        r"expects inputs \['hidden', 'attention_mask'\]: missing \['hidden'\], unexpected \['input_ids'\]",
    ),
    (
        "dtype",
        lambda x: x.update(hidden=x["hidden"].double()),
        r"'hidden' must be float32, got float64",
    ),
    (
        "rank",
        lambda x: x.update(hidden=x["hidden"][0]),
        r"'hidden' must have shape \[batch, seq_len, 16\], got \[5, 16\]",
    ),
    ("width", lambda x: x.update(hidden=torch.zeros(2, 5, 8)), r"hidden size 16"),
    ("batch", lambda x: x.update(attention_mask=x["attention_mask"][:1]), r"must agree"),
    (
        "mask rank",
        lambda x: x.update(attention_mask=x["attention_mask"][0]),
        r"'attention_mask' must have shape \[batch, seq_len\]",
    ),
]


@pytest.mark.parametrize(("what", "damage", "message"), BAD_LATER, ids=[b[0] for b in BAD_LATER])
def test_bad_later_stage_inputs(stages: list[Any], what: str, damage: Any, message: str) -> None:
    x = hidden_inputs()
    damage(x)
    with pytest.raises(ModelInputError, match=message):
        stages[1].forward(x)


def test_hidden_must_have_the_model_dtype() -> None:
    stage = build_stage(tiny(dtype="bfloat16"), 1, weights="memory")
    with pytest.raises(ModelInputError, match=r"'hidden' must be bfloat16, got float32"):
        stage.forward(hidden_inputs())
    out = stage.forward({**hidden_inputs(), "hidden": torch.zeros(2, 5, 16, dtype=torch.bfloat16)})
    assert out["embedding"].dtype == torch.float32


def test_valid_inputs_pass(stages: list[Any]) -> None:
    x = ids_inputs()
    x["attention_mask"][1, 3:] = 0
    stages[0].validate_inputs(x)
    stages[1].validate_inputs(hidden_inputs())


# ---------------------------------------------------------------------------- tokenizers


def test_simple_tokenizer_pads_truncates_and_is_stable() -> None:
    tok = tokenizer_for(tiny())
    batch = tok.encode(
        [
            "Hello, World!",
            "hello world",
            "one two three four five six seven eight nine ten eleven twelve",
        ]
    )
    ids, mask = batch.input_ids, batch.attention_mask
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == (3, 12)  # truncated to max_seq_len
    assert ids[0, 0] == 101 and ids[0, 3] == 102  # [CLS] hello world [SEP]
    assert ids[0].tolist() == ids[1].tolist()  # case and punctuation do not matter
    assert mask[0].tolist() == [1] * 4 + [0] * 8 and not ids[0, 4:].any()
    assert ids[2, -1] == 102 and mask[2].all()  # [SEP] kept after truncation
    assert ((ids[:, 1:-1] >= 1000) | (ids[:, 1:-1] == 0) | (ids[:, 1:-1] == 102)).all()
    assert (ids < 3000).all()
    # the same word always gets the same id, in any batch and any process
    again = tok.encode(["world"])
    assert again.input_ids[0, 1] == ids[0, 2]
    assert SimpleTokenizer(3000, 12).word_id("world") == ids[0, 2]


def test_simple_tokenizer_small_vocab_and_tiny_max_len() -> None:
    tok = SimpleTokenizer(vocab_size=50, max_seq_len=1)
    assert tok.encode(["anything at all"]).input_ids.tolist() == [[1]]
    ids = SimpleTokenizer(50, 8).encode(["a b c"]).input_ids[0]
    assert ids[0] == 1 and ids[4] == 2 and all(3 <= i < 50 for i in ids[1:4])


def test_tokenizer_output_feeds_stage_zero() -> None:
    for kind in ("bert", "synthetic"):
        spec = tiny(kind)
        batch = tokenizer_for(spec).encode(["a long enough text " * 5, "b"])
        build_stage(spec, 0, weights="memory").validate_inputs(batch.as_inputs())


def test_tokenizer_rejects_bad_texts() -> None:
    tok = tokenizer_for(tiny())
    with pytest.raises(ModelInputError, match="at least one text"):
        tok.encode([])
    with pytest.raises(ModelInputError, match="single string"):
        tok.encode("oops")
    with pytest.raises(ModelInputError, match="text 1 must be a string"):
        tok.encode(["ok", 3])  # type: ignore[list-item]


def test_gateway_side_imports_do_not_import_torch() -> None:
    code = """
import sys
from quartfaas.spec import parse_spec
from quartfaas.models import tokenizer_for, stage_param_bytes, build_stage, input_contract
spec = parse_spec({"name": "s", "model": {"kind": "synthetic"},
                   "stages": [{"name": "a", "synthetic": {"work": "none"}}]})
stage = build_stage(spec, 0)
stage.forward(tokenizer_for(spec).encode(["hi there"]).as_inputs())
bert = parse_spec({"name": "b", "model": {"kind": "bert"}, "stages": [{"name": "a"}]})
assert stage_param_bytes(bert, 0) > 0
tokenizer_for(bert).encode(["x"]); input_contract(bert, 0)
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
