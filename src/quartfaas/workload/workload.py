"""``Workload``: a parsed, frozen description of an arrival process, as the CLI and the
experiments name one, and the arrivals it generates (``workload/synthetic.py`` for the
synthetic kinds, ``workload/traces.py`` for ``trace:``).

Workload strings: ``kind:key=value,...`` with an optional ``seed=N``, e.g.
``poisson:rate=20``, ``gamma:rate=20,cv=4``, ``mmpp:rate=20,cv=4,on_frac=0.1``,
``mmpp:rate_hi=50,rate_lo=2,hi_s=5,lo_s=20``, ``trace:azure-code,rate=5``.

``str(w)`` is canonical: ``Workload.parse(str(w)) == w``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from quartfaas.errors import SpecError
from quartfaas.workload.synthetic import (
    MMPP,
    FloatArray,
    check_cv,
    check_k,
    check_positive,
    erlang_renewal,
    gamma_renewal,
    hyperexp_params,
    hyperexp_renewal,
    mmpp,
    mmpp_for,
    poisson,
)
from quartfaas.workload.trace_rate import Method, at_rate
from quartfaas.workload.traces import NAMED_TRACES, Trace, load_trace

# How a trace reaches rate= (workload/trace_rate.py): "thinning" (default: Poisson under the
# trace's 1 s envelope, own time scale), "superpose" (shifted windows), "squeeze" (compress
# time: the old way, kept for comparison), "replay" (the trace as recorded; no rate=).
TRACE_METHODS = ("thinning", "superpose", "squeeze", "replay")


def _window_rate(tr: Trace, duration_s: float | None) -> float:
    """The trace's own mean rate (what resampling without ``rate=`` keeps)."""
    if len(tr) < 2 or tr.duration_s <= 0:
        raise SpecError(f"trace {tr.name} needs >= 2 arrivals over a positive span")
    return len(tr) / tr.duration_s


ParamValue = float | str


@dataclass(frozen=True, slots=True)
class _Kind:
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    usage: str = ""


_KINDS: dict[str, _Kind] = {
    "poisson": _Kind(("rate",), usage="poisson:rate=R"),
    "gamma": _Kind(("rate", "cv"), usage="gamma:rate=R,cv=C"),
    "erlang": _Kind(("rate", "k"), usage="erlang:rate=R,k=K"),
    "hyperexp": _Kind(("rate", "cv"), usage="hyperexp:rate=R,cv=C (C > 1)"),
    "mmpp": _Kind(
        (),
        ("rate", "cv", "on_frac", "on_s", "rate_hi", "rate_lo", "hi_s", "lo_s"),
        usage="mmpp:rate=R,cv=C[,on_frac=F|on_s=S] or mmpp:rate_hi=A,rate_lo=B,hi_s=X,lo_s=Y",
    ),
    "trace": _Kind(
        ("name",),
        ("rate", "compress", "start", "end", "method"),
        usage=f"trace:NAME[,rate=R|compress=F][,method=thinning|superpose|squeeze]"
        f"[,start=S][,end=E] (NAME: {', '.join(sorted(NAMED_TRACES))} or a CSV path)",
    ),
}


_MMPP_FORMS = ({"rate", "cv"}, {"rate_hi", "rate_lo", "hi_s", "lo_s"})


def _fmt(v: ParamValue) -> str:
    if isinstance(v, str):
        return v
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


@dataclass(frozen=True, slots=True)
class Workload:
    """An arrival process: ``kind``, its parameters (sorted by name) and a seed.

    ``str(w)`` is a canonical string that ``Workload.parse`` reads back to an equal value.
    """

    kind: str
    params: tuple[tuple[str, ParamValue], ...]
    seed: int = 0

    @classmethod
    def make(cls, kind: str, params: Mapping[str, ParamValue], seed: int = 0) -> Workload:
        """Validate and build (the same checks as ``parse``)."""
        norm = {k: (v if k in ("name", "method") else float(v)) for k, v in params.items()}
        w = cls(kind, tuple(sorted(norm.items())), int(seed))
        w._validate()
        return w

    @classmethod
    def parse(cls, text: str, *, seed: int = 0) -> Workload:
        """Read ``kind:key=value,...`` (``seed=N`` in the string overrides ``seed``)."""
        kind, _, rest = text.strip().partition(":")
        kind = kind.strip()
        if kind not in _KINDS:
            raise SpecError(
                f"unknown workload kind {kind!r} in {text!r}: expected one of "
                f"{', '.join(sorted(_KINDS))} (e.g. {_KINDS['gamma'].usage})"
            )
        spec = _KINDS[kind]
        params: dict[str, ParamValue] = {}
        for raw in (item.strip() for item in rest.split(",")):
            if not raw:
                continue
            key, eq, value = raw.partition("=")
            key, value = key.strip(), value.strip()
            if not eq:
                if kind != "trace" or "name" in params:
                    raise SpecError(f"{text!r}: expected key=value, got {raw!r} ({spec.usage})")
                key, value = "name", raw
            if key in params:
                raise SpecError(f"{text!r}: parameter {key!r} given twice")
            if key == "seed":
                try:
                    seed = int(value)
                except ValueError:
                    raise SpecError(f"{text!r}: seed must be an integer, got {value!r}") from None
                continue
            if key not in spec.required + spec.optional:
                valid = ", ".join((*spec.required, *spec.optional, "seed"))
                raise SpecError(
                    f"{text!r}: unknown parameter {key!r} for {kind}; valid: {valid} ({spec.usage})"
                )
            if key in ("name", "method"):
                params[key] = value
                continue
            try:
                params[key] = float(value)
            except ValueError:
                raise SpecError(f"{text!r}: {key}={value!r} is not a number") from None
        return cls.make(kind, params, seed)

    def __str__(self) -> str:
        items = [_fmt(v) if k == "name" else f"{k}={_fmt(v)}" for k, v in self.params]
        items.sort(key=lambda s: "=" in s)  # the trace name first
        return f"{self.kind}:{','.join([*items, f'seed={self.seed}'])}"

    def get(self, key: str, default: ParamValue | None = None) -> ParamValue | None:
        return dict(self.params).get(key, default)

    def _num(self, key: str) -> float:
        v = dict(self.params)[key]
        assert isinstance(v, float)
        return v

    def _validate(self) -> None:
        if self.kind not in _KINDS:
            raise SpecError(
                f"unknown workload kind {self.kind!r}: expected one of {sorted(_KINDS)}"
            )
        spec = _KINDS[self.kind]
        given = set(dict(self.params))
        missing = [k for k in spec.required if k not in given]
        if missing:
            raise SpecError(f"{self.kind} needs {', '.join(missing)} ({spec.usage})")
        unknown = given - set(spec.required + spec.optional)
        if unknown:
            raise SpecError(f"unknown parameters {sorted(unknown)} for {self.kind} ({spec.usage})")
        if self.kind == "mmpp":
            form = next((f for f in _MMPP_FORMS if f <= given), None)
            if form is None or (given - form) - ({"on_frac", "on_s"} if "cv" in form else set()):
                raise SpecError(f"mmpp takes {spec.usage}; got {', '.join(sorted(given))}")
        if self.kind == "trace":
            self._check_trace_values(given)
        else:
            self._check_values()

    def _check_trace_values(self, given: set[str]) -> None:
        if "rate" in given and "compress" in given:
            raise SpecError("trace: give rate or compress, not both")
        method = self.get("method")
        if method is not None and method not in TRACE_METHODS:
            raise SpecError(
                f"trace: unknown method {method!r}; valid methods: {', '.join(TRACE_METHODS)}"
            )
        if method is not None and "compress" in given:
            raise SpecError("trace: method applies to rate=, not to compress=")
        for key in ("rate", "compress"):
            if key in given:
                check_positive(key, self._num(key))
        start = self._num("start") if "start" in given else 0.0
        if not (start >= 0 and math.isfinite(start)):
            raise SpecError(f"start ({start}) must be a finite number >= 0")
        if "end" in given and not self._num("end") > start:
            raise SpecError(f"end ({self._num('end')}) must be > start ({start})")

    def _check_values(self) -> None:
        if self.kind == "mmpp":
            self.mmpp_process()
            return
        check_positive("rate", self._num("rate"))
        if self.kind == "gamma":
            check_cv(self._num("cv"))
        elif self.kind == "erlang":
            check_k(self._num("k"))
        elif self.kind == "hyperexp":
            hyperexp_params(self._num("rate"), self._num("cv"))

    def mmpp_process(self) -> MMPP:
        """The MMPP of an ``mmpp`` workload."""
        p = dict(self.params)
        if "cv" in p:
            on_frac, on_s = p.get("on_frac"), p.get("on_s")
            return mmpp_for(
                self._num("rate"),
                self._num("cv"),
                on_frac=None if on_frac is None else float(on_frac),
                on_s=None if on_s is None else float(on_s),
            )
        return MMPP(*(self._num(k) for k in ("rate_hi", "rate_lo", "hi_s", "lo_s")))

    def trace(
        self, duration_s: float | None = None, *, trace_dirs: Sequence[str | Path] | None = None
    ) -> Trace:
        """Arrivals (and, for traces, token counts) over ``[0, duration_s)``.

        Synthetic kinds need ``duration_s``; a trace without one is replayed once.
        """
        if self.kind == "trace":
            return self._replay(duration_s, trace_dirs)
        if duration_s is None:
            raise SpecError(f"workload {self} needs a duration")
        rate = self._num("rate") if self.kind != "mmpp" else 0.0
        if self.kind == "poisson":
            t = poisson(rate, duration_s, self.seed)
        elif self.kind == "gamma":
            t = gamma_renewal(rate, self._num("cv"), duration_s, self.seed)
        elif self.kind == "erlang":
            t = erlang_renewal(rate, int(self._num("k")), duration_s, self.seed)
        elif self.kind == "hyperexp":
            t = hyperexp_renewal(rate, self._num("cv"), duration_s, self.seed)
        else:
            t = mmpp(self.mmpp_process(), duration_s, self.seed)
        return Trace(name=str(self), arrivals_s=t)

    def arrivals(
        self, duration_s: float | None = None, *, trace_dirs: Sequence[str | Path] | None = None
    ) -> FloatArray:
        """Just the arrival times of ``trace(...)``."""
        return self.trace(duration_s, trace_dirs=trace_dirs).arrivals_s

    def _replay(self, duration_s: float | None, trace_dirs: Sequence[str | Path] | None) -> Trace:
        p = dict(self.params)
        tr = load_trace(str(p["name"]), trace_dirs)
        if "start" in p or "end" in p:
            end = p.get("end")
            tr = tr.slice(float(p.get("start", 0.0)), None if end is None else float(end))
        if "compress" in p:
            tr = tr.compress(float(p["compress"]))
        method = str(p.get("method", "thinning" if "rate" in p else "replay"))
        if method == "squeeze":  # the old way: compress time until the mean rate is reached
            if "rate" in p:
                tr = tr.rescale_to_rate(float(p["rate"]))
        elif method != "replay":
            # The trace's own time scale (workload/trace_rate.py); the seed picks the
            # realisation; without rate= the window is resampled at its own mean rate.
            rate = float(p["rate"]) if "rate" in p else _window_rate(tr, duration_s)
            how: Method = "superpose" if method == "superpose" else "thinning"
            return at_rate(tr, rate, method=how, duration_s=duration_s, seed=self.seed)
        return tr if duration_s is None else tr.cover(duration_s)
