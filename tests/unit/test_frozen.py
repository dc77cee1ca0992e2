"""quartfaas.frozen: fast_init builds the same objects as the dataclass's own __init__,
copier the same copies as dataclasses.replace; both cheaper."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from dataclasses import FrozenInstanceError, InitVar, dataclass, field

import pytest

import quartfaas
from quartfaas.frozen import copier, fast_init


def _decorated() -> list[type]:
    """Every class of the package that ``fast_init`` rewrote (it keeps the original)."""
    found: dict[str, type] = {}
    for mod in pkgutil.walk_packages(quartfaas.__path__, "quartfaas."):
        if not mod.name.startswith("quartfaas.control"):
            continue
        module = importlib.import_module(mod.name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and "__dataclass_init__" in obj.__dict__:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


DECORATED = _decorated()


def test_the_tick_s_hot_classes_are_decorated() -> None:
    names = {c.__name__ for c in DECORATED}
    assert {"StageDecision", "StageLoad", "StageState", "HysteresisState", "Step"} <= names
    assert len(DECORATED) >= 15


@pytest.mark.parametrize("cls", DECORATED, ids=lambda c: c.__name__)
def test_each_class_builds_the_same_object_both_ways(cls: type) -> None:
    original = cls.__dataclass_init__  # type: ignore[attr-defined]
    assert inspect.signature(cls.__init__) == inspect.signature(original)
    params = [p for n, p in inspect.signature(original).parameters.items() if n != "self"]
    # Required parameters get distinct stand-ins; the defaults are left to each __init__.
    args = {p.name: _stand_in(cls, p.name) for p in params if p.default is p.empty}
    fast = cls(**args)
    slow = cls.__new__(cls)
    original(slow, **args)
    for f in dataclasses.fields(cls):
        a, b = getattr(fast, f.name), getattr(slow, f.name)
        assert a is b or a == b, f.name
    assert fast == slow
    with pytest.raises(FrozenInstanceError):
        fast.__setattr__(dataclasses.fields(cls)[0].name, None)


_VALID = {"StageLoad": {"name": "s", "arrival_rate": 2.0, "service_mean_s": 0.1}}


def _stand_in(cls: type, name: str) -> object:
    """A valid value where validation needs one (``_VALID``), else a distinct string
    (every other class takes any value: its fields are stored as given)."""
    return _VALID.get(cls.__name__, {}).get(name, f"{cls.__name__}.{name}")


def test_stage_load_still_validates() -> None:
    from quartfaas.control.corrector.tailmodel import StageLoad

    with pytest.raises(ValueError, match="bad service_mean_s"):
        StageLoad("s", 1.0, 0.0)
    assert StageLoad("s", 1.0, 0.1, servers_per_replica=2).servers_per_replica == 2


@fast_init
@dataclass(frozen=True, slots=True)
class _Every:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=lambda: [1])
    d: int = field(default=4, init=False)
    e: list[int] = field(default_factory=list, init=False)
    f: float = field(default=0.5, kw_only=True)
    g: int = field(default=0, kw_only=True)
    seen: list[str] = field(default_factory=list, compare=False)

    def __post_init__(self) -> None:
        self.seen.append(f"post {self.a}")


def test_every_kind_of_field_as_the_dataclass_sets_it() -> None:
    x = _Every(1)
    y = _Every.__new__(_Every)
    _Every.__dataclass_init__(y, 1)  # type: ignore[attr-defined]
    assert x == y and (x.b, x.c, x.d, x.e, x.f, x.g) == ("b", [1], 4, [], 0.5, 0)
    assert x.seen == ["post 1"] and x.c is not _Every(1).c  # a fresh default each time
    z = _Every(2, "z", [9], f=1.5, g=3)
    assert (z.a, z.b, z.c, z.f, z.g) == (2, "z", [9], 1.5, 3)
    with pytest.raises(TypeError):
        _Every(1, "b", [1], [], 2.0)  # type: ignore[misc] # f is keyword-only
    with pytest.raises(FrozenInstanceError):
        z.a = 3  # type: ignore[misc]
    assert dataclasses.replace(z, a=5).a == 5


def test_what_it_cannot_do_is_refused() -> None:
    @dataclass(slots=True)
    class Mutable:
        a: int

    @dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclass(frozen=True, slots=True)
    class WithInitVar:
        a: int
        b: InitVar[int] = 0

        def __post_init__(self, b: int) -> None:
            pass

    for cls in (Mutable, NoSlots, WithInitVar):
        with pytest.raises(TypeError):
            fast_init(cls)


def test_a_copier_s_copy_is_replace_s_without_post_init() -> None:
    z = _Every(2, "z", [9], f=1.5, g=3)
    copy_bf = copier(_Every, "b", "f")
    got = copy_bf(z, "new", 2.5)
    assert z.seen == ["post 2"]  # __post_init__ did not run for the copy
    assert got == dataclasses.replace(z, b="new", f=2.5)
    # every field copied (compare=False ones too, and by reference, as replace passes them)
    assert all(getattr(got, f.name) is getattr(z, f.name) for f in dataclasses.fields(_Every)
               if f.name not in ("b", "f"))  # fmt: skip
    assert copier(_Every, "f", "b")(z, 2.5, "new") == got  # values in the order named
    with pytest.raises(FrozenInstanceError):
        got.a = 3  # type: ignore[misc]
    # A field that is not an __init__ parameter is copied as it is (replace would set it
    # to its default again): a copy, not a new object from the same arguments.
    object.__setattr__(z, "d", 7)
    assert copy_bf(z, "b", 0.5).d == 7 and dataclasses.replace(z, b="b").d == 4


def test_a_copier_refuses_what_it_cannot_copy() -> None:
    @dataclass(frozen=True)
    class NoSlots:
        a: int

    with pytest.raises(TypeError, match="NoSlots: copier needs"):
        copier(NoSlots, "a")
    for bad in ((), ("nope",), ("a", "a")):
        with pytest.raises(TypeError, match="cannot copy"):
            copier(_Every, *bad)
