"""Per-host record of stage weights cached in host memory (Quart's ``KeysManager``).

One ``KeysManager`` per host says which stages' weights are held in that host's memory
(a live stage template process the local backend forks replicas from, or the simulator's
model of one), how big they are, when they were last used, how often they were hit, and
whether they are *pinned* (the stage has live replicas on the host, so its weights must
stay). It keeps the cached bytes under ``memory_threshold_frac`` of host memory with LRU
eviction.

Unlike the prototype (``OCD/CacheAwareScheduler.py``, see the reference §1.4 and §6.16-17),
eviction here makes room *before* an insert, the threshold is a setting rather than a
hard-coded 0.85, pinned entries are never evicted, and an insert that cannot fit is
refused with the numbers (a value, not an exception).

Design choice: a small **mutable** bookkeeping object with exactly one owner per host
(the local backend's host, or the simulator's host model). It mirrors physical state
that changes as side effects happen (a template is started, a process is killed), so the
owner mutates it as it applies those effects; ``admit`` returns the evictions the owner
must carry out. Decision code never holds a manager: it reads the frozen ``CacheView``
from ``view()`` (``control/placement/``, ``control/placement/cache_plan.py``), and the pure
``plan_admission`` is the one eviction rule both use, so a decision made on a view and
the manager applying it agree.

Recency is the order of use (a counter), not the ``now`` values, so LRU is well defined
when several uses share one timestamp; ``now`` is kept for reports and idle ages.
Hits and misses are counted by ``lookup``; ``admit`` does not count either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from quartfaas.errors import SpecError

GIB = 1024**3


def gib(n: float) -> str:
    """Bytes as ``'1.23 GiB'`` for reasons."""
    return f"{n / GIB:.2f} GiB"


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One stage's weights held in a host's memory."""

    key: str
    size_bytes: int
    last_used: float
    hits: int = 0
    pins: int = 0  # live replicas of the stage on this host; pinned while > 0
    seq: int = 0  # recency order: larger is more recently used

    @property
    def pinned(self) -> bool:
        return self.pins > 0


@dataclass(frozen=True, slots=True)
class CacheView:
    """A frozen picture of one host's cache; ``entries`` from least to most recently used."""

    host_memory_bytes: int
    capacity_bytes: int
    entries: tuple[CacheEntry, ...] = ()

    @property
    def used_bytes(self) -> int:
        return sum(e.size_bytes for e in self.entries)

    @property
    def free_bytes(self) -> int:
        return max(0, self.capacity_bytes - self.used_bytes)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(e.key for e in self.entries)

    def get(self, key: str) -> CacheEntry | None:
        for e in self.entries:
            if e.key == key:
                return e
        return None


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to "cache ``key`` here": whether, what it evicts (LRU order), and why."""

    key: str
    admitted: bool
    evicted: tuple[str, ...]
    reason: str
    evicted_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Eviction:
    """The answer to an explicit ``evict``."""

    key: str
    evicted: bool
    freed_bytes: int
    reason: str


def plan_admission(
    view: CacheView, key: str, size_bytes: int, *, protect: frozenset[str] = frozenset()
) -> Admission:
    """Pure: whether ``key`` (``size_bytes``) fits in ``view`` and which entries must go.

    Victims are unpinned entries not in ``protect``, least recently used first, taken
    only until the new entry fits under the capacity. Nothing is evicted on a refusal.
    """
    if size_bytes < 0:
        raise ValueError(f"size_bytes must be >= 0, got {size_bytes}")
    if view.get(key) is not None:
        return Admission(key, True, (), "already cached")
    if size_bytes > view.host_memory_bytes:
        return Admission(
            key,
            False,
            (),
            f"refused: {gib(size_bytes)} exceeds the host's total memory "
            f"{gib(view.host_memory_bytes)}",
        )
    if size_bytes > view.capacity_bytes:
        return Admission(
            key,
            False,
            (),
            f"refused: {gib(size_bytes)} exceeds the cache capacity {gib(view.capacity_bytes)} "
            f"({view.capacity_bytes / view.host_memory_bytes:.2f} of "
            f"{gib(view.host_memory_bytes)} host memory)",
        )
    used = view.used_bytes
    deficit = used + size_bytes - view.capacity_bytes
    if deficit <= 0:
        return Admission(
            key,
            True,
            (),
            f"admitted {gib(size_bytes)}; cache {gib(used + size_bytes)} of "
            f"{gib(view.capacity_bytes)}",
        )
    victims: list[str] = []
    freed = 0
    for e in view.entries:
        if freed >= deficit:
            break
        if e.pinned or e.key in protect:
            continue
        victims.append(e.key)
        freed += e.size_bytes
    if freed < deficit:
        evictable = sum(e.size_bytes for e in view.entries if not e.pinned and e.key not in protect)
        return Admission(
            key,
            False,
            (),
            f"refused: needs {gib(size_bytes)} but the cache has {gib(view.capacity_bytes - used)} "
            f"free of {gib(view.capacity_bytes)} and only {gib(evictable)} evictable "
            f"({gib(used - evictable)} pinned or protected)",
        )
    return Admission(
        key,
        True,
        tuple(victims),
        f"admitted {gib(size_bytes)} after evicting {len(victims)} least recently used "
        f"entr{'y' if len(victims) == 1 else 'ies'} ({gib(freed)})",
        evicted_bytes=freed,
    )


def capacity_for(host_memory_bytes: int, memory_threshold_frac: float) -> int:
    """Cache capacity: ``floor(frac x host memory)``; validates both settings."""
    if isinstance(host_memory_bytes, bool) or not isinstance(host_memory_bytes, int):
        raise SpecError(f"host_memory_bytes must be an int, got {host_memory_bytes!r}")
    if host_memory_bytes <= 0:
        raise SpecError(f"host_memory_bytes = {host_memory_bytes}: must be > 0")
    if not (math.isfinite(memory_threshold_frac) and 0 < memory_threshold_frac <= 1):
        raise SpecError(f"memory_threshold_frac = {memory_threshold_frac!r}: must be in (0, 1]")
    return math.floor(host_memory_bytes * memory_threshold_frac)


class KeysManager:
    """LRU record of one host's cached stages, owned and mutated by one caller."""

    def __init__(self, host_memory_bytes: int, memory_threshold_frac: float = 0.85) -> None:
        self.capacity_bytes = capacity_for(host_memory_bytes, memory_threshold_frac)
        self.host_memory_bytes = host_memory_bytes
        self.memory_threshold_frac = memory_threshold_frac
        self.hits = 0
        self.misses = 0
        # Insertion order of this dict is irrelevant; recency lives in CacheEntry.seq.
        self._entries: dict[str, CacheEntry] = {}
        self._seq = 0
        self._used = 0

    # -- reads ------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def free_bytes(self) -> int:
        return self.capacity_bytes - self._used

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> tuple[CacheEntry, ...]:
        """Every entry, least recently used first."""
        return tuple(sorted(self._entries.values(), key=lambda e: e.seq))

    def view(self) -> CacheView:
        """A frozen snapshot for decision code."""
        return CacheView(self.host_memory_bytes, self.capacity_bytes, self.entries())

    def copy(self) -> KeysManager:
        other = KeysManager(self.host_memory_bytes, self.memory_threshold_frac)
        other.hits, other.misses, other._seq, other._used = (
            self.hits,
            self.misses,
            self._seq,
            self._used,
        )
        other._entries = dict(self._entries)
        return other

    # -- uses -------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def lookup(self, key: str, now: float) -> CacheEntry | None:
        """A hit (entry returned, its last use and hit count updated) or a miss (None)."""
        e = self._entries.get(key)
        if e is None:
            self.misses += 1
            return None
        self.hits += 1
        e = replace(e, last_used=now, hits=e.hits + 1, seq=self._next_seq())
        self._entries[key] = e
        return e

    def admit(self, key: str, size_bytes: int, now: float) -> Admission:
        """Cache ``key``, evicting LRU unpinned entries first; refused if it cannot fit.

        Admitting a key already cached refreshes its recency (sizes must agree).
        The caller must carry out ``evicted`` (stop those templates).
        """
        old = self._entries.get(key)
        if old is not None:
            if old.size_bytes != size_bytes:
                raise ValueError(
                    f"{key!r} is cached with {old.size_bytes} bytes; admit asked for "
                    f"{size_bytes} (a different size needs a different key)"
                )
            self._entries[key] = replace(old, last_used=now, seq=self._next_seq())
            return Admission(key, True, (), "already cached")
        decision = plan_admission(self.view(), key, size_bytes)
        if not decision.admitted:
            return decision
        for victim in decision.evicted:
            self._used -= self._entries.pop(victim).size_bytes
        self._entries[key] = CacheEntry(key, size_bytes, now, seq=self._next_seq())
        self._used += size_bytes
        return decision

    def pin(self, key: str) -> bool:
        """One more live replica of ``key`` on this host; False if ``key`` is not cached."""
        e = self._entries.get(key)
        if e is None:
            return False
        self._entries[key] = replace(e, pins=e.pins + 1)
        return True

    def unpin(self, key: str) -> bool:
        """One live replica fewer; False if ``key`` is not cached or not pinned."""
        e = self._entries.get(key)
        if e is None or e.pins == 0:
            return False
        self._entries[key] = replace(e, pins=e.pins - 1)
        return True

    def evict(self, key: str) -> Eviction:
        """Drop ``key`` now, unless it is pinned or absent (then a refusal says so)."""
        e = self._entries.get(key)
        if e is None:
            return Eviction(key, False, 0, "not cached")
        if e.pinned:
            return Eviction(key, False, 0, f"pinned by {e.pins} live replica(s)")
        del self._entries[key]
        self._used -= e.size_bytes
        return Eviction(key, True, e.size_bytes, f"evicted, freed {gib(e.size_bytes)}")
