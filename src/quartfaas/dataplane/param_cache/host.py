"""Host facts the parameter cache acts on: memory, PSS, the subreaper bit, the tmpfs copy.

``meminfo`` and ``pss_bytes`` read ``/proc``; ``copy_verified`` copies a stage's weights
into tmpfs and checks their sha256 in the same pass; ``set_child_subreaper`` makes the
gateway inherit (and so reap) replicas whose template died.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import stat
from pathlib import Path

from quartfaas.errors import WeightsError

_COPY_CHUNK = 8 * 1024 * 1024


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                out[key] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    return out


def pss_bytes(pid: int) -> int | None:
    """Proportional set size of a process (shared pages split among their users)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def set_child_subreaper() -> bool:
    """Orphaned replicas (their template died) are re-parented to us, so we can reap them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def copy_verified(src: Path, dst: Path, sha256: str | None) -> None:
    """Copy ``src`` to ``dst`` (atomically), hashing in the same pass; a mismatch fails."""
    if src.exists() and not stat.S_ISREG(src.stat().st_mode):
        raise WeightsError(f"weights file {str(src)!r} is not a regular file")
    tmp = dst.with_suffix(dst.suffix + ".part")
    h = hashlib.sha256()
    try:
        with open(src, "rb", buffering=0) as fin, open(tmp, "wb") as fout:
            buf = bytearray(_COPY_CHUNK)
            view = memoryview(buf)
            while n := fin.readinto(buf):
                h.update(view[:n])
                fout.write(view[:n])
    except FileNotFoundError:
        tmp.unlink(missing_ok=True)
        raise WeightsError(
            f"weights file {str(src)!r} does not exist; "
            "run `quartfaas make-weights SPEC` to (re)generate it"
        ) from None
    if sha256 is not None and h.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise WeightsError(
            f"weights file {str(src)!r} fails its checksum (sha256 {h.hexdigest()[:12]}..., "
            f"manifest says {sha256[:12]}...): it is corrupt or truncated; "
            "run `quartfaas make-weights SPEC --force` to regenerate it"
        )
    os.replace(tmp, dst)
