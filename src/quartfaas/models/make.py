"""Make every stage's weights file and the manifest for a spec (``quartfaas make-weights``).

BERT stages are drawn from seeded generators (``bert.init_tensor``), MiniLM stages are
sliced from the package checkpoint (``minilm.iter_stage_tensors``); either way tensors are
produced one at a time and streamed to disk (``weights.write_stage_file``), so making a
1 GiB stage needs about one tensor of extra memory and takes seconds.

A stage whose file already matches the manifest (same model id, layers, size and sha256)
is skipped unless ``force``; the manifest is rewritten after each stage that changed, so
an interrupted run keeps what it finished.

Neighbours: ``layout.py`` (what a stage holds), ``weights.py`` (file format, manifest);
the CLI (``quartfaas make-weights SPEC``) calls :func:`make_weights`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import torch

from quartfaas.errors import WeightsError
from quartfaas.models import minilm
from quartfaas.models.bert import TORCH_DTYPES, init_tensor
from quartfaas.models.layout import (
    dtype_name,
    model_id,
    model_identity,
    stage_param_bytes,
    stage_parts,
    stage_tensor_shapes,
)
from quartfaas.models.weights import (
    META_EMBEDDINGS,
    META_LAYERS,
    META_MODEL_ID,
    Manifest,
    StageFileInfo,
    read_manifest,
    sha256_file,
    write_manifest,
    write_stage_file,
)
from quartfaas.spec import BertModelSpec, MiniLMModelSpec, PipelineSpec

Progress = Callable[[str, int, int], None]


def iter_stage_tensors(spec: PipelineSpec, index: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Stage ``index``'s tensors in layout order, made from the seed or the checkpoint."""
    model = spec.model
    shapes = stage_tensor_shapes(spec, index)
    if isinstance(model, BertModelSpec):
        dtype = TORCH_DTYPES[dtype_name(model)]
        for name, shape in shapes.items():
            yield name, init_tensor(name, shape, model.seed, dtype)
    elif isinstance(model, MiniLMModelSpec):
        yield from minilm.iter_stage_tensors(list(shapes), TORCH_DTYPES[dtype_name(model)])
    # synthetic: no tensors


def expected_info(spec: PipelineSpec, index: int, path: Path) -> StageFileInfo:
    """The manifest entry stage ``index`` should have, less its size and checksum."""
    model = spec.model
    assert isinstance(model, BertModelSpec | MiniLMModelSpec)
    parts = stage_parts(spec, index)
    weights_dir = Path(spec.weights_dir)
    try:
        file = str(path.relative_to(weights_dir))
    except ValueError:
        file = str(path.resolve())
    return StageFileInfo(
        file=file,
        bytes=-1,
        sha256="",
        dtype=dtype_name(model),
        layers=(parts.start, parts.end),
        embeddings=parts.embeddings,
        head=parts.head,
        model_id=model_id(model),
    )


def _matches(old: StageFileInfo | None, want: StageFileInfo, path: Path) -> bool:
    """Does the file on disk already hold what ``want`` describes (full checksum)?"""
    if old is None:
        return False
    same = (old.file, old.dtype, old.layers, old.embeddings, old.model_id) == (
        want.file,
        want.dtype,
        want.layers,
        want.embeddings,
        want.model_id,
    )
    if not same or not path.is_file() or path.stat().st_size != old.bytes:
        return False
    # Hashing is far cheaper than regenerating, and catches a corrupted file.
    return sha256_file(path) == old.sha256


def _old_manifest(weights_dir: Path, mid: str) -> dict[str, StageFileInfo]:
    try:
        old = read_manifest(weights_dir)
    except WeightsError:
        return {}
    return dict(old.stages) if old.model_id == mid else {}


def make_weights(
    spec: PipelineSpec, *, force: bool = False, progress: Progress | None = None
) -> list[Path]:
    """Write every stage file of ``spec`` and ``<weights_dir>/manifest.json``; return the files.

    ``progress(stage_name, bytes_done, bytes_total)`` counts parameter bytes (the file adds
    its header): called with 0 before a stage, then as tensors are written, and once with
    done == total for a stage that was already up to date. Synthetic pipelines
    have no weights: nothing is written and ``[]`` is returned. Relative paths in ``spec``
    are taken against the current directory (``load_spec`` has already made them absolute).
    """
    model = spec.model
    if not isinstance(model, BertModelSpec | MiniLMModelSpec):
        return []
    if isinstance(model, MiniLMModelSpec):
        minilm.check_config(minilm.model_dir())  # fail before writing anything
    weights_dir = Path(spec.weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    mid = model_id(model)
    stages = {} if force else _old_manifest(weights_dir, mid)
    # Entries for stages no longer in the spec are dropped: the manifest describes one split.
    stages = {s.name: stages[s.name] for s in spec.stages if s.name in stages}
    manifest = Manifest(model_id=mid, model=model_identity(model), stages=stages)
    paths: list[Path] = []
    for index, stage in enumerate(spec.stages):
        path = Path(spec.stage_weights_path(index))
        paths.append(path)
        want = expected_info(spec, index, path)
        old = manifest.stages.get(stage.name)
        total = stage_param_bytes(spec, index)
        if not force and _matches(old, want, path):
            if progress is not None:
                progress(stage.name, total, total)
            continue
        shapes = stage_tensor_shapes(spec, index)
        entries = [(name, shape, want.dtype) for name, shape in shapes.items()]
        metadata = {
            META_MODEL_ID: mid,
            META_LAYERS: f"{want.layers[0]},{want.layers[1]}",
            META_EMBEDDINGS: "1" if want.embeddings else "0",
        }

        def report(done: int, total: int, name: str = stage.name) -> None:
            if progress is not None:
                progress(name, done, total)

        if progress is not None:
            progress(stage.name, 0, total)  # a stage with no tensors still gets a call
        size, digest = write_stage_file(
            path, entries, iter_stage_tensors(spec, index), metadata, progress=report
        )
        manifest.stages[stage.name] = replace(want, bytes=size, sha256=digest)
        write_manifest(weights_dir, manifest)
    write_manifest(weights_dir, manifest)
    return paths
