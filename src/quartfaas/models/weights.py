"""Stage weights on disk: safetensors files, a per-pipeline manifest, checked loading.

Files. One safetensors file per stage. :func:`write_stage_file` streams tensors into a
temporary file (hashing as it writes, so a 1 GiB stage never sits in memory twice) and
renames it into place with ``os.replace``; a crash leaves the old file or none, never half a
file. Each file's ``__metadata__`` names the model id and layer range it was cut for.

Manifest. ``<weights_dir>/manifest.json`` records, per stage: file, bytes, sha256, dtype,
layers, and the model identity. A loader compares a file with it: size always (catches
truncation for free), sha256 when ``verify=True`` (reads the whole file once, in 8 MiB
chunks).

Loading modes (:func:`load_stage_state`); safetensors validates the file in both, neither
starts a thread or runs a torch op (safe before a fork):

* ``"mmap"``: ``safe_open(..., backend="mmap")`` maps the file ``MAP_PRIVATE`` and the
  tensors are views of that mapping: no copy, pages come from the page cache (RssFile, not
  RssAnon) and are shared by every process that maps the file, including forked children.
  A write to a tensor copies that page privately and never reaches the file. Where idle
  page cache is reclaimed, a mapping of a file on disk is not a memory cache: map a copy
  on tmpfs (``/dev/shm``) for that.
* ``"copy"``: the data section is read (``readinto``, one kernel copy) into one private
  anonymous buffer (RssAnon) whose slices are the tensors; a fork shares it copy-on-write.
  (safetensors' ``backend="pread"`` also copies, but slower; it is the fallback
  for files with dtypes or alignments our writer never makes.)

Neighbours: ``make.py`` writes files and the manifest; ``stage.py`` / ``torch_stage.py``
load them; the parameter cache (``dataplane/``) calls :func:`load_stage_state` itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from quartfaas.errors import WeightsError
from quartfaas.models.layout import DTYPE_BYTES, SAFETENSORS_DTYPE

MANIFEST_NAME = "manifest.json"
HASH_CHUNK_BYTES = 8 * 1024 * 1024
DATA_ALIGN = 64
META_MODEL_ID = "quartfaas.model_id"
META_LAYERS = "quartfaas.layers"
META_EMBEDDINGS = "quartfaas.embeddings"

LoadMode = Literal["mmap", "copy"]

REMEDY = "run `quartfaas make-weights SPEC` to (re)generate it"


@dataclass(frozen=True)
class StageFileInfo:
    """One stage's entry in the manifest (what its file must be)."""

    file: str  # relative to the weights dir, or absolute when the stage's file lives elsewhere
    bytes: int
    sha256: str
    dtype: str
    layers: tuple[int, int]
    embeddings: bool
    head: bool
    model_id: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StageFileInfo:
        return cls(
            file=str(data["file"]),
            bytes=int(data["bytes"]),
            sha256=str(data["sha256"]),
            dtype=str(data["dtype"]),
            layers=(int(data["layers"][0]), int(data["layers"][1])),
            embeddings=bool(data["embeddings"]),
            head=bool(data["head"]),
            model_id=str(data["model_id"]),
        )


@dataclass(frozen=True)
class Manifest:
    model_id: str
    model: dict[str, Any]
    stages: dict[str, StageFileInfo]

    def to_json(self) -> str:
        stages = {k: {**asdict(v), "layers": list(v.layers)} for k, v in self.stages.items()}
        data = {"model_id": self.model_id, "model": self.model, "stages": stages}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def read_manifest(weights_dir: Path) -> Manifest:
    """The manifest in ``weights_dir``; WeightsError if it is missing or unreadable."""
    path = Path(weights_dir) / MANIFEST_NAME
    if not path.is_file():
        raise WeightsError(f"weights manifest {str(path)!r} does not exist; {REMEDY}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        stages = {str(k): StageFileInfo.from_json(v) for k, v in data["stages"].items()}
        return Manifest(model_id=str(data["model_id"]), model=dict(data["model"]), stages=stages)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise WeightsError(
            f"weights manifest {str(path)!r} is corrupt ({exc!r}); {REMEDY}"
        ) from None


def write_manifest(weights_dir: Path, manifest: Manifest) -> Path:
    path = Path(weights_dir) / MANIFEST_NAME
    _atomic_write_bytes(path, manifest.to_json().encode())
    return path


def manifest_file_path(weights_dir: Path, info: StageFileInfo) -> Path:
    p = Path(info.file)
    return p if p.is_absolute() else Path(weights_dir) / p


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    buf = bytearray(HASH_CHUNK_BYTES)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            if progress is not None:
                progress(n)
    return h.hexdigest()


def _header_bytes(
    entries: list[tuple[str, tuple[int, ...], str]], metadata: Mapping[str, str]
) -> tuple[bytes, int]:
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, shape, dtype in entries:
        size = DTYPE_BYTES[dtype]
        for d in shape:
            size *= d
        header[name] = {
            "dtype": SAFETENSORS_DTYPE[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    # Pad with spaces (as safetensors does) so the data starts 64-byte aligned: mapped
    # tensors then start on cache-line boundaries, as freshly allocated ones do.
    blob += b" " * (-(8 + len(blob)) % DATA_ALIGN)
    return struct.pack("<Q", len(blob)) + blob, offset


def write_stage_file(
    path: Path,
    entries: list[tuple[str, tuple[int, ...], str]],
    tensors: Iterable[tuple[str, torch.Tensor]],
    metadata: Mapping[str, str],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, str]:
    """Stream ``tensors`` (in ``entries`` order) to a safetensors file; return (bytes, sha256).

    ``entries`` lists (name, shape, dtype) up front because the header (offsets) precedes
    the data; each tensor is checked against its entry, written, then dropped.
    ``progress(done, total)`` counts data bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head, total = _header_bytes(entries, metadata)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    h = hashlib.sha256(head)
    done = 0
    try:
        with open(tmp, "wb") as f:
            f.write(head)
            it = iter(tensors)
            for name, shape, dtype in entries:
                got_name, t = next(it)
                if got_name != name or tuple(t.shape) != shape or str(t.dtype) != f"torch.{dtype}":
                    raise ValueError(
                        f"tensor {got_name!r} {tuple(t.shape)} {t.dtype} does not match the "
                        f"layout entry {name!r} {shape} {dtype}"
                    )
                view = t.contiguous().view(torch.uint8).reshape(-1).numpy().data
                f.write(view)
                h.update(view)
                done += len(view)
                if progress is not None:
                    progress(done, total)
        # No fsync: the manifest's size and sha256 catch a file torn by a crash.
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(head) + total, h.hexdigest()


def find_manifest_entry(path: Path) -> StageFileInfo | None:
    """The manifest entry for ``path`` in the manifest next to it, if any."""
    folder = path.parent
    if not (folder / MANIFEST_NAME).is_file():
        return None
    manifest = read_manifest(folder)
    for info in manifest.stages.values():
        if manifest_file_path(folder, info).resolve() == path.resolve():
            return info
    return None


def check_file(
    path: Path, expected: StageFileInfo | None, *, verify: bool, allow_unlisted: bool = False
) -> None:
    """Existence, size and (with ``verify``) sha256 of ``path`` against its manifest entry.

    A file no manifest entry describes is refused (with the manifest removed, flipped bytes
    were served and replies carried NaN; issue #13, item 9) unless ``allow_unlisted``
    (the spec's ``verify: false``) says to serve it unchecked."""
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist; {REMEDY}")
    if expected is None:
        if verify or not allow_unlisted:
            raise WeightsError(
                f"cannot verify weights file {str(path)!r}: no manifest entry describes it; "
                f"{REMEDY}, or set `verify: false` in the spec to serve it unchecked"
            )
        return
    size = path.stat().st_size
    if size != expected.bytes:
        what = "truncated" if size < expected.bytes else "longer than expected"
        raise WeightsError(
            f"weights file {str(path)!r} is {what}: {size} bytes, the manifest says "
            f"{expected.bytes}; {REMEDY}"
        )
    if verify:
        digest = sha256_file(path)
        if digest != expected.sha256:
            raise WeightsError(
                f"weights file {str(path)!r} is corrupted: sha256 {digest[:16]}... differs "
                f"from the manifest's {expected.sha256[:16]}...; {REMEDY}"
            )


def load_stage_state(
    path: str | Path,
    mode: LoadMode = "mmap",
    verify: bool = False,
    *,
    expected: StageFileInfo | None = None,
    allow_unlisted: bool = False,
) -> dict[str, torch.Tensor]:
    """Tensors of one stage file, checked against its manifest entry.

    ``expected`` defaults to the entry in the ``manifest.json`` next to the file (a file
    copied elsewhere, e.g. to tmpfs, should be given its entry). Always checked: the file
    exists, its size, that safetensors can parse it, and that its metadata names the
    expected model and layers. ``verify=True`` also checks the sha256 (reads every byte).
    A file without a manifest entry is refused unless ``allow_unlisted``. Raises
    WeightsError naming the file.
    """
    path = Path(path)
    if mode not in ("mmap", "copy"):
        raise ValueError(f"mode must be 'mmap' or 'copy', not {mode!r}")
    if expected is None and path.is_file():
        expected = find_manifest_entry(path)
    check_file(path, expected, verify=verify, allow_unlisted=allow_unlisted)
    from safetensors import safe_open

    try:
        # Always through the mmap backend first: it validates the whole layout (header,
        # offsets covering the data exactly) while reading only the header.
        with safe_open(str(path), framework="pt", backend="mmap") as f:
            meta = f.metadata() or {}
            state = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error type for a bad file
        raise WeightsError(
            f"weights file {str(path)!r} is not a valid safetensors file ({exc}); {REMEDY}"
        ) from None
    if expected is not None:
        _check_metadata(path, meta, expected)
    if mode == "copy":
        copied = _read_copy(path)
        state = copied if copied is not None else _read_copy_pread(path)
    return state


_TORCH_DTYPE = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _read_copy(path: Path) -> dict[str, torch.Tensor] | None:
    """All tensors in one private buffer, filled by ``readinto`` (one kernel copy from the
    page cache, one thread), faster than safetensors' pread backend on these hosts.
    None if the file has a dtype or alignment our own writer never produces."""
    with open(path, "rb", buffering=0) as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        for entry in header.values():
            dtype = _TORCH_DTYPE.get(entry["dtype"])
            if dtype is None or entry["data_offsets"][0] % dtype.itemsize:
                return None
        size = path.stat().st_size - 8 - n
        buf = torch.empty(size, dtype=torch.uint8)
        view = buf.numpy().data
        done = 0
        while done < size:
            got = f.readinto(view[done:])
            if not got:
                raise WeightsError(f"weights file {str(path)!r} shrank while read; {REMEDY}")
            done += got
    out: dict[str, torch.Tensor] = {}
    for name, entry in header.items():
        start, end = entry["data_offsets"]
        t = buf[start:end].view(_TORCH_DTYPE[entry["dtype"]])
        out[name] = t.view(entry["shape"])
    return out


def _read_copy_pread(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", backend="pread") as f:
        return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118


def _check_metadata(path: Path, meta: Mapping[str, str], expected: StageFileInfo) -> None:
    got_id = meta.get(META_MODEL_ID)
    if got_id != expected.model_id:
        raise WeightsError(
            f"weights file {str(path)!r} was made for another model (model id {got_id!r}, "
            f"expected {expected.model_id!r}); {REMEDY}"
        )
    want_layers = f"{expected.layers[0]},{expected.layers[1]}"
    if meta.get(META_LAYERS) != want_layers:
        raise WeightsError(
            f"weights file {str(path)!r} holds layers [{meta.get(META_LAYERS)}), expected "
            f"[{want_layers}); the pipeline was re-split since it was made; {REMEDY}"
        )


def check_state_layout(
    state: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, ...]],
    dtype: str,
    source: str,
) -> None:
    """Names, shapes and dtype of ``state`` against the stage layout; WeightsError naming
    ``source`` (a file, usually) if they differ."""
    missing = sorted(set(shapes) - set(state))
    extra = sorted(set(state) - set(shapes))
    if missing or extra:
        raise WeightsError(
            f"{source} does not hold this stage's tensors (missing {missing[:4]}"
            f"{'...' if len(missing) > 4 else ''}, unexpected {extra[:4]}"
            f"{'...' if len(extra) > 4 else ''}); it belongs to another spec or split; {REMEDY}"
        )
    for name, shape in shapes.items():
        t = state[name]
        if tuple(t.shape) != shape or str(t.dtype) != f"torch.{dtype}":
            raise WeightsError(
                f"{source}: tensor {name!r} is {tuple(t.shape)} {t.dtype}, this stage needs "
                f"{shape} {dtype}; it belongs to another spec; {REMEDY}"
            )
