"""Stage weights files: deterministic bytes, a manifest, checked loading, clear errors."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from quartfaas.errors import WeightsError
from quartfaas.models import build_stage, load_stage_state, make_weights, read_manifest
from quartfaas.models.weights import sha256_file
from quartfaas.spec import PipelineSpec, parse_spec


def tiny(
    weights_dir: Path, *, seed: int = 0, stages: int = 3, hidden: int = 32, **stage: Any
) -> PipelineSpec:
    return parse_spec(
        {
            "name": "tiny",
            "model": {
                "kind": "bert",
                "layers": 4,
                "hidden_size": hidden,
                "heads": 4,
                "vocab_size": 2048,
                "max_seq_len": 32,
                "seed": seed,
            },
            "stages": [{"name": f"s{i}", **stage} for i in range(stages)],
            "weights_dir": str(weights_dir),
        }
    )


def digests(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    a = digests(make_weights(tiny(tmp_path / "a", seed=7)))
    b = digests(make_weights(tiny(tmp_path / "b", seed=7)))
    c = digests(make_weights(tiny(tmp_path / "c", seed=8)))
    assert a == b
    assert all(x != y for x, y in zip(a, c, strict=True))
    # manifest records the same sha256 as the bytes on disk
    manifest = read_manifest(tmp_path / "a")
    assert [manifest.stages[f"s{i}"].sha256 for i in range(3)] == a


def test_a_layer_has_the_same_weights_whatever_the_split(tmp_path: Path) -> None:
    three = make_weights(tiny(tmp_path / "three", stages=3))  # layers [0,2) [2,3) [3,4)
    two = make_weights(tiny(tmp_path / "two", stages=2))  # layers [0,2) [2,4)
    last3, last2 = load_file(three[2]), load_file(two[1])
    for name, tensor in last3.items():
        assert torch.equal(tensor, last2[name])


def test_files_are_plain_safetensors_with_bert_init(tmp_path: Path) -> None:
    (path, *_) = make_weights(tiny(tmp_path))
    state = load_file(path)
    assert torch.equal(state["embeddings.norm.weight"], torch.ones(32))
    assert torch.equal(state["layers.0.attn.qkv.bias"], torch.zeros(96))
    std = float(state["embeddings.word.weight"].std())
    assert 0.019 < std < 0.021
    assert not list(tmp_path.glob(".*.tmp"))  # temp files were renamed away


def test_make_weights_skips_up_to_date_files_and_repairs_bad_ones(tmp_path: Path) -> None:
    spec = tiny(tmp_path)
    calls: list[tuple[str, int, int]] = []
    paths = make_weights(spec, progress=lambda *a: calls.append(a))
    assert {name for name, _, _ in calls} == {"s0", "s1", "s2"}
    assert all(done <= total for _, done, total in calls)
    mtimes = [p.stat().st_mtime_ns for p in paths]
    calls.clear()
    make_weights(spec, progress=lambda *a: calls.append(a))
    assert [p.stat().st_mtime_ns for p in paths] == mtimes  # skipped
    assert all(done == total for _, done, total in calls)
    good = paths[1].read_bytes()
    paths[1].write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, one bit off
    make_weights(spec)
    assert paths[1].read_bytes() == good  # repaired without force
    make_weights(spec, force=True)
    assert paths[0].stat().st_mtime_ns != mtimes[0]


def test_missing_file_names_it_and_the_fix(tmp_path: Path) -> None:
    spec = tiny(tmp_path)
    paths = make_weights(spec)
    paths[1].unlink()
    with pytest.raises(WeightsError, match=r"s1\.safetensors.*does not exist.*make-weights"):
        build_stage(spec, 1)
    with pytest.raises(WeightsError, match=r"s1\.safetensors"):
        load_stage_state(paths[1])


def test_missing_manifest_is_a_weights_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"manifest.*does not exist.*make-weights"):
        build_stage(tiny(tmp_path), 0)


def test_truncated_file_is_caught_by_its_size(tmp_path: Path) -> None:
    spec = tiny(tmp_path)
    paths = make_weights(spec)
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2])
    for verify in (False, True):
        with pytest.raises(WeightsError, match=r"s0\.safetensors.*truncated"):
            build_stage(spec, 0, verify=verify)


def test_truncated_file_without_manifest_fails_to_parse(tmp_path: Path) -> None:
    paths = make_weights(tiny(tmp_path))
    lone = tmp_path / "elsewhere" / "lone.safetensors"
    lone.parent.mkdir()
    lone.write_bytes(paths[0].read_bytes()[:-100])
    with pytest.raises(WeightsError, match=r"lone\.safetensors.*not a valid safetensors"):
        load_stage_state(lone, allow_unlisted=True)
    with pytest.raises(WeightsError, match=r"cannot verify.*lone\.safetensors.*verify: false"):
        load_stage_state(lone)
    with pytest.raises(WeightsError, match=r"cannot verify.*lone\.safetensors"):
        load_stage_state(lone, verify=True)


def test_flipped_byte_is_caught_with_verify(tmp_path: Path) -> None:
    spec = tiny(tmp_path)
    paths = make_weights(spec)
    data = bytearray(paths[2].read_bytes())
    data[-5] ^= 0x40
    paths[2].write_bytes(bytes(data))
    build_stage(spec, 2, verify=False)  # same size and valid header: only the hash knows
    with pytest.raises(WeightsError, match=r"s2\.safetensors.*corrupted.*sha256"):
        build_stage(spec, 2, verify=True)
    with pytest.raises(WeightsError, match=r"s2\.safetensors.*corrupted"):
        load_stage_state(paths[2], verify=True)


def test_file_from_another_spec_is_rejected(tmp_path: Path) -> None:
    spec = tiny(tmp_path / "mine", seed=0)
    mine = make_weights(spec)
    theirs = make_weights(tiny(tmp_path / "theirs", seed=1))
    wide = make_weights(tiny(tmp_path / "wide", hidden=64))
    # same shapes, other seed, same size: the file's model id gives it away
    shutil.copyfile(theirs[1], mine[1])
    with pytest.raises(WeightsError, match=r"s1\.safetensors.*another model"):
        build_stage(spec, 1)
    # other shapes: the size differs from the manifest
    shutil.copyfile(wide[2], mine[2])
    with pytest.raises(WeightsError, match=r"s2\.safetensors"):
        build_stage(spec, 2)
    # a whole weights dir made for another model
    with pytest.raises(WeightsError, match=r"made for another model"):
        build_stage(tiny(tmp_path / "theirs", seed=0), 0)


def test_resplit_pipeline_needs_new_weights(tmp_path: Path) -> None:
    make_weights(tiny(tmp_path, stages=3))
    with pytest.raises(WeightsError, match=r"no up-to-date entry for stage 's1'"):
        build_stage(tiny(tmp_path, stages=2), 1)
    two = tiny(tmp_path, stages=2)
    make_weights(two)
    build_stage(two, 1)
    assert set(read_manifest(tmp_path).stages) == {"s0", "s1"}


def test_state_mapping_is_checked_against_the_layout(tmp_path: Path) -> None:
    spec = tiny(tmp_path)
    paths = make_weights(spec)
    state = load_stage_state(paths[1])
    stage = build_stage(spec, 1, weights=state)
    assert stage.param_bytes > 0
    with pytest.raises(WeightsError, match="does not hold this stage's tensors"):
        build_stage(spec, 2, weights=state)


def _file_mapping_of(ptr: int, path: Path) -> bool:
    target = str(path.resolve())
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= ptr < end:
            return len(fields) == 6 and fields[5] == target
    return False


def test_mmap_shares_file_pages_and_copy_does_not(tmp_path: Path) -> None:
    spec = tiny(tmp_path)
    path = make_weights(spec)[0]
    mapped = load_stage_state(path, mode="mmap")
    copied = load_stage_state(path, mode="copy")
    name = "embeddings.word.weight"
    assert torch.equal(mapped[name], copied[name])
    assert _file_mapping_of(mapped[name].data_ptr(), path)
    assert not _file_mapping_of(copied[name].data_ptr(), path)
    # the stage's parameters are the mapped tensors themselves (assign, no copy)
    stage = build_stage(spec, 0, weights="mmap")
    param = dict(stage.module.named_parameters())[name]  # type: ignore[attr-defined]
    assert _file_mapping_of(param.data_ptr(), path)
    # a write to a mapped tensor stays private: the file is unchanged
    before = sha256_file(path)
    mapped[name][0, 0] = 42.0
    assert sha256_file(path) == before


def test_copy_mode_reads_foreign_safetensors_files(tmp_path: Path) -> None:
    # Files not written by make_weights (other dtypes, unaligned offsets) still load.
    path = tmp_path / "foreign.safetensors"
    tensors = {"a": torch.arange(3, dtype=torch.int8), "b": torch.randn(2, 3).double()}
    save_file(tensors, path)
    for mode in ("mmap", "copy"):
        got = load_stage_state(path, mode=mode, allow_unlisted=True)
        assert got.keys() == tensors.keys()
        assert all(torch.equal(got[k], tensors[k]) for k in tensors)


def test_loading_starts_no_threads_and_imports_no_compiler(tmp_path: Path) -> None:
    # Threads before a fork hang the children in libgomp; torch._dynamo costs ~1 s of cold
    # start (it is imported by random init on the meta device, which stages avoid).
    spec_dir = tmp_path / "w"
    make_weights(tiny(spec_dir))
    code = """
import json, sys
from pathlib import Path
import torch
from quartfaas.spec import parse_spec
from quartfaas.models import build_stage
def threads():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
spec = parse_spec(json.loads(sys.argv[1]))
before = threads()
stages = [build_stage(spec, i, weights=m) for i in range(3) for m in ("mmap", "copy")]
print(before, threads(), int("torch._dynamo" in sys.modules))
"""
    spec_json = json.dumps(tiny(spec_dir).model_dump(mode="json"))
    out = subprocess.run(
        [sys.executable, "-c", code, spec_json], capture_output=True, text=True, check=True
    )
    before, after, dynamo = map(int, out.stdout.split())
    assert after == before
    assert dynamo == 0
