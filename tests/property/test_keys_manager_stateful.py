"""Stateful test of KeysManager against a plain model (Hypothesis RuleBasedStateMachine).

The model is a list in recency order (least recent first) with sizes and pin counts; it
implements LRU-with-pins directly. After every step the manager must agree with it and
never hold more than its capacity.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from quartfaas.control.placement.keys_manager import KeysManager

KEYS = st.sampled_from([f"k{i}" for i in range(8)])
UNIT = 1 << 20  # sizes in MiB keep the numbers small


class KeysManagerMachine(RuleBasedStateMachine):
    @initialize(
        host=st.integers(min_value=4, max_value=64),
        frac=st.sampled_from([0.5, 0.75, 0.85, 1.0]),
    )
    def setup(self, host: int, frac: float) -> None:
        self.km = KeysManager(host * UNIT, frac)
        self.cap = self.km.capacity_bytes
        self.host = host * UNIT
        self.order: list[str] = []  # least recently used first
        self.size: dict[str, int] = {}
        self.pins: dict[str, int] = {}
        self.hits = 0
        self.misses = 0
        self.entry_hits: dict[str, int] = {}
        self.now = 0.0

    def _tick(self) -> float:
        self.now += 1.0
        return self.now

    def _touch(self, key: str) -> None:
        self.order.remove(key)
        self.order.append(key)

    @rule(key=KEYS)
    def lookup(self, key: str) -> None:
        got = self.km.lookup(key, self._tick())
        if key in self.size:
            self.hits += 1
            self.entry_hits[key] += 1
            self._touch(key)
            assert got is not None and got.hits == self.entry_hits[key]
            assert got.last_used == self.now
        else:
            self.misses += 1
            assert got is None

    @rule(key=KEYS, mib=st.integers(min_value=0, max_value=80))
    def admit(self, key: str, mib: int) -> None:
        size = mib * UNIT
        if key in self.size:
            size = self.size[key]  # re-admitting must use the cached size
            adm = self.km.admit(key, size, self._tick())
            assert adm.admitted and adm.evicted == ()
            self._touch(key)
            return
        adm = self.km.admit(key, size, self._tick())
        used = sum(self.size.values())
        unpinned = [k for k in self.order if self.pins[k] == 0]
        expect: list[str] = []
        if size <= self.cap:
            need = used + size - self.cap
            freed = 0
            for k in unpinned:
                if freed >= need:
                    break
                expect.append(k)
                freed += self.size[k]
            fits = freed >= need
        else:
            fits = False
        assert adm.admitted == fits, adm.reason
        if not fits:
            assert adm.evicted == ()
            if size > self.host:
                assert "total memory" in adm.reason
            return
        assert list(adm.evicted) == expect  # LRU order, pinned skipped, only what is needed
        for k in expect:
            assert self.pins[k] == 0
            self.order.remove(k)
            del self.size[k], self.pins[k], self.entry_hits[k]
        self.order.append(key)
        self.size[key] = size
        self.pins[key] = 0
        self.entry_hits[key] = 0

    @rule(key=KEYS)
    def pin(self, key: str) -> None:
        assert self.km.pin(key) == (key in self.size)
        if key in self.size:
            self.pins[key] += 1

    @rule(key=KEYS)
    def unpin(self, key: str) -> None:
        ok = key in self.size and self.pins[key] > 0
        assert self.km.unpin(key) == ok
        if ok:
            self.pins[key] -= 1

    @rule(key=KEYS)
    def evict(self, key: str) -> None:
        ev = self.km.evict(key)
        ok = key in self.size and self.pins[key] == 0
        assert ev.evicted == ok, ev.reason
        if ok:
            assert ev.freed_bytes == self.size[key]
            self.order.remove(key)
            del self.size[key], self.pins[key], self.entry_hits[key]

    @invariant()
    def agrees_with_model(self) -> None:
        if not hasattr(self, "km"):
            return
        assert self.km.used_bytes == sum(self.size.values()) <= self.cap
        entries = self.km.entries()
        assert [e.key for e in entries] == self.order
        assert all(e.pins == self.pins[e.key] for e in entries)
        assert all(e.hits == self.entry_hits[e.key] for e in entries)
        assert (self.km.hits, self.km.misses) == (self.hits, self.misses)


KeysManagerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestKeysManager = KeysManagerMachine.TestCase
