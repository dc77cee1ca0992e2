"""KeysManager: LRU under a threshold, room made before insert, pins, refusals as values."""

from __future__ import annotations

import pytest

from quartfaas.control.placement.keys_manager import (
    GIB,
    CacheView,
    KeysManager,
    plan_admission,
)
from quartfaas.errors import SpecError


def make(host_gib: int = 10, frac: float = 0.8) -> KeysManager:
    return KeysManager(host_gib * GIB, frac)


def test_capacity_is_the_threshold_share_of_host_memory() -> None:
    km = make(10, 0.8)
    assert km.capacity_bytes == 8 * GIB
    assert KeysManager(100 * GIB).capacity_bytes == int(0.85 * 100 * GIB)


@pytest.mark.parametrize("frac", [0.0, -0.1, 1.01, float("nan"), float("inf")])
def test_threshold_is_validated(frac: float) -> None:
    with pytest.raises(SpecError, match="memory_threshold_frac"):
        KeysManager(GIB, frac)


@pytest.mark.parametrize("mem", [0, -5])
def test_host_memory_is_validated(mem: int) -> None:
    with pytest.raises(SpecError, match="host_memory_bytes"):
        KeysManager(mem)


def test_lookup_counts_hits_and_misses_and_refreshes_recency() -> None:
    km = make()
    assert km.lookup("a", 0.0) is None
    km.admit("a", GIB, 1.0)
    km.admit("b", GIB, 2.0)
    hit = km.lookup("a", 5.0)
    assert hit is not None and hit.hits == 1 and hit.last_used == 5.0
    assert (km.hits, km.misses) == (1, 1)
    assert [e.key for e in km.entries()] == ["b", "a"]  # a is now most recent


def test_eviction_makes_room_before_insert_in_lru_order() -> None:
    km = make(10, 0.8)  # 8 GiB
    for i, key in enumerate("abcd"):
        assert km.admit(key, 2 * GIB, float(i)).admitted
    km.lookup("a", 10.0)  # a becomes most recent; b is now the LRU
    adm = km.admit("e", 3 * GIB, 11.0)
    assert adm.admitted
    assert adm.evicted == ("b", "c")  # 2 GiB was not enough; the next LRU goes too
    assert adm.evicted_bytes == 4 * GIB
    assert km.used_bytes == 7 * GIB <= km.capacity_bytes
    assert "e" in km and "b" not in km and "c" not in km


def test_prototype_defect_is_not_copied_insert_fits_exactly_at_capacity() -> None:
    # The prototype evicted only while *already* above the threshold, so an insert that
    # needed room was dropped. Here a full cache still admits by evicting first.
    km = make(10, 0.8)
    km.admit("a", 8 * GIB, 0.0)
    adm = km.admit("b", 8 * GIB, 1.0)
    assert adm.admitted and adm.evicted == ("a",)
    assert km.used_bytes == 8 * GIB


def test_pinned_entries_are_never_evicted_and_refusal_has_numbers() -> None:
    km = make(10, 0.8)
    km.admit("a", 4 * GIB, 0.0)
    km.admit("b", 3 * GIB, 1.0)
    assert km.pin("a") and km.pin("b")
    adm = km.admit("c", 2 * GIB, 2.0)
    assert not adm.admitted and adm.evicted == ()
    assert "refused" in adm.reason and "7.00 GiB pinned" in adm.reason
    assert "a" in km and "b" in km and km.used_bytes == 7 * GIB
    km.unpin("b")
    adm = km.admit("c", 2 * GIB, 3.0)
    assert adm.admitted and adm.evicted == ("b",)


def test_pins_count_live_replicas() -> None:
    km = make()
    km.admit("a", GIB, 0.0)
    km.pin("a")
    km.pin("a")
    km.unpin("a")
    assert km.evict("a").evicted is False  # one replica still live
    km.unpin("a")
    assert km.unpin("a") is False  # not pinned any more
    assert km.evict("a").evicted is True
    assert km.pin("missing") is False


def test_too_large_for_the_host_is_refused_with_the_numbers() -> None:
    km = make(10, 0.8)
    adm = km.admit("huge", 12 * GIB, 0.0)
    assert not adm.admitted
    assert "12.00 GiB" in adm.reason and "total memory 10.00 GiB" in adm.reason
    adm = km.admit("big", 9 * GIB, 0.0)
    assert not adm.admitted and "cache capacity 8.00 GiB" in adm.reason
    assert len(km) == 0 and km.used_bytes == 0


def test_refused_insert_evicts_nothing() -> None:
    km = make(10, 0.8)
    km.admit("a", 3 * GIB, 0.0)
    km.admit("b", 3 * GIB, 1.0)
    km.pin("b")
    adm = km.admit("c", 6 * GIB, 2.0)
    assert not adm.admitted
    assert "a" in km  # a could have been evicted, but it would not have been enough


def test_readmit_refreshes_and_rejects_a_size_change() -> None:
    km = make()
    km.admit("a", GIB, 0.0)
    km.admit("b", GIB, 1.0)
    assert km.admit("a", GIB, 2.0).reason == "already cached"
    assert [e.key for e in km.entries()] == ["b", "a"]
    with pytest.raises(ValueError, match="different size"):
        km.admit("a", 2 * GIB, 3.0)


def test_evict_reports_why() -> None:
    km = make()
    assert km.evict("x").reason == "not cached"
    km.admit("x", GIB, 0.0)
    ev = km.evict("x")
    assert ev.evicted and ev.freed_bytes == GIB and km.used_bytes == 0


def test_view_and_plan_admission_agree_with_admit() -> None:
    km = make(10, 0.8)
    for i, key in enumerate("abc"):
        km.admit(key, 2 * GIB, float(i))
    view = km.view()
    assert isinstance(view, CacheView)
    assert view.used_bytes == 6 * GIB and view.free_bytes == 2 * GIB
    planned = plan_admission(view, "d", 5 * GIB)
    assert planned.evicted == ("a", "b")
    assert km.admit("d", 5 * GIB, 9.0).evicted == planned.evicted
    # protect keeps an entry out of the victims
    again = plan_admission(km.view(), "e", 2 * GIB, protect=frozenset({"c"}))
    assert "c" not in again.evicted


def test_copy_is_independent() -> None:
    km = make()
    km.admit("a", GIB, 0.0)
    other = km.copy()
    other.admit("b", GIB, 1.0)
    other.lookup("a", 2.0)
    assert "b" not in km and km.hits == 0 and other.hits == 1


def test_zero_size_and_negative_size() -> None:
    km = make()
    assert km.admit("synthetic", 0, 0.0).admitted
    with pytest.raises(ValueError, match="size_bytes"):
        km.admit("neg", -1, 0.0)
