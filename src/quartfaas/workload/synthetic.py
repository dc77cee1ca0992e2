"""Seeded synthetic arrival processes and the ``Workload`` description the CLI parses.

Every generator returns a sorted numpy array of arrival times in ``[0, duration_s)`` and is
a pure function of its arguments and seed: the same seed gives the same array (for a given
numpy version; numpy keeps PCG64 streams stable but may change how distributions use them).
Neighbours: ``workload/traces.py`` (the ``trace:`` kind and the ``Trace`` container),
``workload/loadgen.py`` (replays the arrays), the simulator (feeds them to its sources) and
``metrics/windows.py`` (whose CV estimators the renewal processes here are used to test).

Processes, with the inter-arrival CV each produces:

* ``poisson``  exponential gaps, CV 1;
* ``gamma``    Gamma renewal with any CV >= 0 (shape 1/CV²; CV 0 is periodic);
* ``erlang``   Erlang-k renewal, CV 1/√k;
* ``hyperexp`` two-phase hyper-exponential renewal with balanced means, any CV > 1;
* ``mmpp``     two-state Markov-modulated Poisson (rates ``rate_hi``/``rate_lo``, exponential
  sojourns with means ``hi_s``/``lo_s``), started in its stationary state. ``mmpp_for`` picks
  an on-off (``rate_lo = 0``) MMPP with a target mean rate and inter-arrival CV; its
  inter-arrival law is then hyper-exponential with SCV ``1 + 2·r·hi_s·(1-f)²/f``, ``f`` the
  on-fraction. Renewal processes start with an arrival-free origin (first arrival after one
  gap), so the first gap is not from the equilibrium law; that bias fades with length.

Workload strings: ``kind:key=value,...`` with an optional ``seed=N``, e.g.
``poisson:rate=20``, ``gamma:rate=20,cv=4``, ``mmpp:rate=20,cv=4,on_frac=0.1``,
``mmpp:rate_hi=50,rate_lo=2,hi_s=5,lo_s=20``, ``trace:azure-code,rate=5``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from quartfaas.errors import SpecError
from quartfaas.workload.traces import NAMED_TRACES, Trace, load_trace

Seed = int | np.random.Generator
FloatArray = npt.NDArray[np.float64]
_MAX_SOJOURNS = 20_000_000  # a memory guard: ~160 MB of sojourn bookkeeping


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _positive(name: str, value: float) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise SpecError(f"{name} ({value}) must be a finite number > 0")
    return float(value)


def _check_cv(cv: float) -> None:
    if not (cv >= 0 and math.isfinite(cv)):
        raise SpecError(f"cv ({cv}) must be a finite number >= 0")


def _check_k(k: float) -> int:
    if not (math.isfinite(k) and int(k) == k and k >= 1):
        raise SpecError(f"k ({k}) must be an integer >= 1")
    return int(k)


def _renewal(
    draw: Callable[[np.random.Generator, int], FloatArray],
    rate: float,
    duration_s: float,
    seed: Seed,
    scv: float,
) -> FloatArray:
    """Arrival times of a renewal process with mean gap 1/rate, cut at ``duration_s``."""
    _positive("rate", rate)
    _positive("duration_s", duration_s)
    rng = _rng(seed)
    expected = rate * duration_s
    # One chunk is enough almost always (mean + 6 sd of the count); top up otherwise.
    size = int(expected + 6.0 * math.sqrt(expected * max(scv, 1.0)) + 16)
    chunks: list[FloatArray] = []
    total = 0.0
    while total < duration_s:
        times = total + np.cumsum(draw(rng, size))
        chunks.append(times)
        total = float(times[-1])
        size = max(size // 4, 64)
    t = np.concatenate(chunks)
    return t[t < duration_s]


def poisson(rate: float, duration_s: float, seed: Seed = 0) -> FloatArray:
    """Poisson arrivals at ``rate`` per second (exponential gaps, CV 1)."""
    return _renewal(lambda g, n: g.exponential(1.0 / rate, n), rate, duration_s, seed, 1.0)


def gamma_renewal(rate: float, cv: float, duration_s: float, seed: Seed = 0) -> FloatArray:
    """Renewal arrivals with Gamma gaps of mean 1/rate and coefficient of variation ``cv``.

    ``cv`` 0 is periodic, 1 Poisson, above 1 bursty (shape 1/cv² < 1 makes many tiny gaps
    and a few long ones).
    """
    _check_cv(cv)
    if cv == 0:
        return _renewal(lambda g, n: np.full(n, 1.0 / rate), rate, duration_s, seed, 0.0)
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    return _renewal(lambda g, n: g.gamma(shape, scale, n), rate, duration_s, seed, cv * cv)


def erlang_renewal(rate: float, k: int, duration_s: float, seed: Seed = 0) -> FloatArray:
    """Renewal arrivals with Erlang-k gaps of mean 1/rate (CV 1/√k)."""
    k = _check_k(k)
    return _renewal(lambda g, n: g.gamma(k, 1.0 / (rate * k), n), rate, duration_s, seed, 1 / k)


def hyperexp_params(rate: float, cv: float) -> tuple[float, float, float]:
    """``(p, mu1, mu2)`` of a balanced-means H2 with mean 1/rate and CV ``cv`` (> 1).

    A gap is Exp(mu1) with probability p, else Exp(mu2); each branch carries half the mean.
    """
    _positive("rate", rate)
    if not (cv > 1 and math.isfinite(cv)):
        raise SpecError(f"cv ({cv}) of a hyper-exponential must be > 1 (use gamma for <= 1)")
    c2 = cv * cv
    p = 0.5 * (1.0 + math.sqrt((c2 - 1.0) / (c2 + 1.0)))
    return p, 2.0 * p * rate, 2.0 * (1.0 - p) * rate


def hyperexp_renewal(rate: float, cv: float, duration_s: float, seed: Seed = 0) -> FloatArray:
    """Renewal arrivals with two-phase hyper-exponential gaps (mean 1/rate, CV ``cv`` > 1)."""
    p, mu1, mu2 = hyperexp_params(rate, cv)

    def draw(g: np.random.Generator, n: int) -> FloatArray:
        fast = g.random(n) < p
        return g.exponential(1.0, n) / np.where(fast, mu1, mu2)

    return _renewal(draw, rate, duration_s, seed, cv * cv)


@dataclass(frozen=True, slots=True)
class MMPP:
    """Two-state MMPP: Poisson at ``rate_hi`` for Exp(``hi_s``) seconds, then ``rate_lo``…"""

    rate_hi: float
    rate_lo: float
    hi_s: float
    lo_s: float

    def __post_init__(self) -> None:
        _positive("hi_s", self.hi_s)
        _positive("lo_s", self.lo_s)
        for name in ("rate_hi", "rate_lo"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise SpecError(f"{name} ({value}) must be a finite number >= 0")
        if self.mean_rate <= 0:
            raise SpecError("an MMPP needs rate_hi or rate_lo > 0")

    @property
    def mean_rate(self) -> float:
        return (self.rate_hi * self.hi_s + self.rate_lo * self.lo_s) / (self.hi_s + self.lo_s)

    def interarrival_scv(self) -> float:
        """Exact SCV of the stationary inter-arrival time (phase-type with D0 = Q - Λ)."""
        lam = np.array([self.rate_hi, self.rate_lo])
        q = np.array([[-1 / self.hi_s, 1 / self.hi_s], [1 / self.lo_s, -1 / self.lo_s]])
        pi = np.array([self.hi_s, self.lo_s]) / (self.hi_s + self.lo_s)
        pi_a = pi * lam / float(pi @ lam)  # phase seen just after an arrival
        m = np.linalg.inv(np.diag(lam) - q)  # (-D0)^-1
        ones = np.ones(2)
        m1 = float(pi_a @ m @ ones)
        m2 = 2.0 * float(pi_a @ m @ m @ ones)
        return m2 / (m1 * m1) - 1.0

    def interarrival_cv(self) -> float:
        return math.sqrt(max(self.interarrival_scv(), 0.0))


def mmpp_for(
    rate: float, cv: float, *, on_frac: float | None = None, on_s: float | None = None
) -> MMPP:
    """An on-off MMPP with mean rate ``rate`` and inter-arrival CV ``cv`` (>= 1).

    One more knob fixes the shape: ``on_frac`` (share of time on, so peak/mean = 1/on_frac;
    default 0.25) or ``on_s`` (mean on-period, seconds). A higher CV at a fixed rate needs
    longer bursts. CV 1 gives Poisson (both states at ``rate``).
    """
    _positive("rate", rate)
    if not (cv >= 1 and math.isfinite(cv)):
        raise SpecError(f"cv ({cv}) of an MMPP must be >= 1 (use gamma or erlang for < 1)")
    if on_frac is not None and on_s is not None:
        raise SpecError(f"give on_frac ({on_frac}) or on_s ({on_s}), not both")
    if cv == 1:
        return MMPP(rate_hi=rate, rate_lo=rate, hi_s=1.0, lo_s=1.0)
    excess = cv * cv - 1.0  # = 2·r·on_s·(1-f)²/f for an on-off MMPP
    if on_s is not None:
        _positive("on_s", on_s)
        k = excess / (2.0 * rate * on_s)
        f = ((2.0 + k) - math.sqrt((2.0 + k) ** 2 - 4.0)) / 2.0  # root in (0, 1)
    else:
        f = 0.25 if on_frac is None else on_frac
        if not 0 < f < 1:
            raise SpecError(f"on_frac ({f}) must be in (0, 1)")
        on_s = excess * f / (2.0 * rate * (1.0 - f) ** 2)
    return MMPP(rate_hi=rate / f, rate_lo=0.0, hi_s=on_s, lo_s=on_s * (1.0 - f) / f)


def mmpp(process: MMPP, duration_s: float, seed: Seed = 0) -> FloatArray:
    """Arrival times of ``process`` over ``[0, duration_s)``, starting in its stationary state."""
    _positive("duration_s", duration_s)
    rng = _rng(seed)
    means = np.array([process.hi_s, process.lo_s])
    rates = np.array([process.rate_hi, process.rate_lo])
    expected = 2.0 * duration_s / (means[0] + means[1])
    if expected > _MAX_SOJOURNS:
        raise SpecError(
            f"MMPP would switch state ~{expected:.3g} times in {duration_s} s "
            f"(limit {_MAX_SOJOURNS}): use longer sojourns or a shorter duration"
        )
    first = 0 if rng.random() < means[0] / (means[0] + means[1]) else 1
    size = int(expected + 6.0 * math.sqrt(expected) + 16)
    starts: list[FloatArray] = []
    lengths: list[FloatArray] = []
    states: list[npt.NDArray[np.int64]] = []
    total, state0 = 0.0, first
    while total < duration_s:
        state = (state0 + np.arange(size)) % 2
        length = rng.exponential(1.0, size) * means[state]
        end = total + np.cumsum(length)
        starts.append(end - length)
        lengths.append(length)
        states.append(state)
        total, state0 = float(end[-1]), int((state0 + size) % 2)
    start = np.concatenate(starts)
    length = np.concatenate(lengths)
    state = np.concatenate(states)
    keep = start < duration_s
    start, state = start[keep], state[keep]
    length = np.minimum(length[keep], duration_s - start)
    counts = rng.poisson(rates[state] * length)
    t = np.repeat(start, counts) + rng.random(int(counts.sum())) * np.repeat(length, counts)
    t.sort()
    return t


# --- Workload: a parsed, frozen description -------------------------------------------------

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
        ("rate", "compress", "start", "end"),
        usage=f"trace:NAME[,rate=R|compress=F][,start=S][,end=E] (NAME: "
        f"{', '.join(sorted(NAMED_TRACES))} or a CSV path)",
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
        norm = {k: (v if k == "name" else float(v)) for k, v in params.items()}
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
            if key == "name":
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
        for key in ("rate", "compress"):
            if key in given:
                _positive(key, self._num(key))
        start = self._num("start") if "start" in given else 0.0
        if not (start >= 0 and math.isfinite(start)):
            raise SpecError(f"start ({start}) must be a finite number >= 0")
        if "end" in given and not self._num("end") > start:
            raise SpecError(f"end ({self._num('end')}) must be > start ({start})")

    def _check_values(self) -> None:
        if self.kind == "mmpp":
            self.mmpp_process()
            return
        _positive("rate", self._num("rate"))
        if self.kind == "gamma":
            _check_cv(self._num("cv"))
        elif self.kind == "erlang":
            _check_k(self._num("k"))
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
        if "rate" in p:
            tr = tr.rescale_to_rate(float(p["rate"]))
        return tr if duration_s is None else tr.cover(duration_s)
