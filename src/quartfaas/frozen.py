"""Cheaper construction of frozen, slotted dataclasses (the controller tick makes hundreds).

State and decisions are frozen dataclasses (the house style: state is returned, never
mutated). A frozen dataclass's generated ``__init__`` cannot assign its fields (its
``__setattr__`` raises), so it sets each one with ``object.__setattr__(self, name,
value)``: a global lookup, an attribute lookup and a generic call per field, about 100 ns
each. A 7-field ``StageDecision`` cost ~0.9 us to make, against ~0.18 us unfrozen, and a
64-stage tick makes several hundred such objects.

``fast_init`` gives such a class an ``__init__`` that sets each field through its slot's
member descriptor (what ``object.__setattr__`` ends up calling), bound once when the class
is made: ~0.48 us instead of ~0.83 us for ``StageDecision``, and 3% of the 64-stage
controller tick (``benchmarks/tick_ab.py``: per-tick ratio 0.969, 0 of 400 ticks decided
differently). Everything else is the
dataclass's own: the parameters (names, order, keyword-only ones, defaults, default
factories) are read from the generated ``__init__``'s signature, ``__post_init__`` runs
as before, assignment still raises ``FrozenInstanceError``, and ``eq``, ``hash``,
``repr`` and ``dataclasses.replace`` are untouched. ``tests/unit/test_frozen.py`` builds
every decorated class of the package both ways and compares.

Refused (``TypeError``): a class that is not a frozen dataclass with ``__slots__``, and
one with ``InitVar`` pseudo-fields (passed to ``__post_init__``; none of ours has one).

``copier(cls, *changed)`` makes the other cheap constructor a tick needs: a copy of an
instance with a few fields changed (``dataclasses.replace`` without its keyword handling,
field introspection and ``__post_init__``), every field set through its slot, the list of
fields read from the class, so a field added later is copied without editing the callers.
The caller validates the changed values (the others were validated when the original was
made). Unlike ``replace``, a field that is not an ``__init__`` parameter is copied as it
is, not set to its default again (none of the classes copied this way has one).
``StageLoad.with_load`` and ``StageSnapshot.with_service`` are built on it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["copier", "fast_init"]


def _check(cls: type, what: str) -> None:
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: {what} needs @dataclass(frozen=True, slots=True)")


def fast_init(cls: type[T]) -> type[T]:
    """Replace ``cls``'s generated ``__init__`` (module docstring). Use it above
    ``@dataclass(frozen=True, slots=True)``; the original stays as
    ``cls.__dataclass_init__``."""
    _check(cls, "fast_init")
    original = cls.__dict__["__init__"]
    sig = inspect.signature(original)
    args = [p for name, p in sig.parameters.items() if name != "self"]
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    init_names = [f.name for f in fields if f.init]
    if sorted(p.name for p in args) != sorted(init_names):
        raise TypeError(f"{cls.__name__}: InitVar parameters are not supported by fast_init")
    ns: dict[str, Any] = {}
    head: list[str] = []  # the parameters, in the signature's order
    for p in args:
        if p.kind is inspect.Parameter.KEYWORD_ONLY and "*" not in head:
            head.append("*")
        if p.default is inspect.Parameter.empty:
            head.append(p.name)
        else:
            ns[f"_d_{p.name}"] = p.default  # for a factory: the dataclass's own marker
            head.append(f"{p.name}=_d_{p.name}")
    body: list[str] = []  # the fields set, in the fields' order
    for f in fields:
        setter = f"_s_{f.name}"
        ns[setter] = cls.__dict__[f.name].__set__
        has_factory = f.default_factory is not dataclasses.MISSING
        if has_factory:
            ns[f"_f_{f.name}"] = f.default_factory
        if f.init:
            value = (
                f"_f_{f.name}() if {f.name} is _d_{f.name} else {f.name}" if has_factory else f.name
            )
        elif has_factory:  # not a parameter: set as the dataclass sets it, or not at all
            value = f"_f_{f.name}()"
        elif f.default is not dataclasses.MISSING:
            ns[f"_v_{f.name}"] = f.default
            value = f"_v_{f.name}"
        else:
            continue
        body.append(f"    {setter}(self, {value})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    src = f"def __init__(self, {', '.join(head)}):\n" + "\n".join(body or ["    pass"])
    exec(src, ns)  # the source is built above from the class's own fields
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = original.__doc__
    init.__annotations__ = dict(original.__annotations__)  # help() and inspect as before
    cls.__dataclass_init__ = original  # type: ignore[attr-defined]
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


def copier(cls: type[T], *changed: str) -> Callable[..., T]:
    """``copy(src, *values)``: a copy of ``src`` (a ``cls``) with the fields ``changed``
    set to ``values`` in that order and every other field copied, set through the slots'
    member descriptors; no ``__post_init__`` (module docstring)."""
    _check(cls, "copier")
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [c for c in changed if c not in names]
    if unknown or len(set(changed)) != len(changed) or not changed:
        raise TypeError(f"{cls.__name__}: cannot copy with the fields {list(changed)}")
    ns: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    body = ["    o = _new(_cls)"]
    for name in names:
        ns[f"_s_{name}"] = cls.__dict__[name].__set__
        value = f"v{changed.index(name)}" if name in changed else f"src.{name}"
        body.append(f"    _s_{name}(o, {value})")
    values = ", ".join(f"v{k}" for k in range(len(changed)))
    src = f"def copy(src, {values}):\n" + "\n".join([*body, "    return o"])
    exec(src, ns)  # the source is built above from the class's own fields
    copy: Callable[..., T] = ns["copy"]
    copy.__qualname__ = f"copier({cls.__qualname__}, {', '.join(changed)})"
    return copy
