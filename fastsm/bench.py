"""``python -m fastsm bench``: every backend and installed peer, side by side, speed and accuracy.

Contenders come from the registry (every available fastsm backend) plus the peers that
import here: the NumPy baseline ``exp(x - max) / sum`` (always), torch, scipy, jax, and a
plain ``np.copyto`` of the same bytes (the memory roofline).  Within a cell, contenders run
interleaved round by round (shuffled each round) so machine drift hits them equally; the
first call (JIT compile, thread start-up) is timed apart as first-call latency.  Accuracy is
measured against a long-double reference computed here (the test-suite's oracle lives in
``tests/`` and is not installed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import _api, _dispatch, _linear, _registry, _threads, _tuning

OPS = ("softmax", "log_softmax", "logsumexp", "cross_entropy", "cross_entropy_with_grad")
# the fused linear cross-entropy (forward; forward + backward): on shapes tokens x hidden :
# vocabulary, asked for by --ops (fastsm bench only; the asv and pytest-benchmark grids
# are the kernel ops above)
LINEAR_OPS = ("linear_cross_entropy", "linear_cross_entropy_with_grad")
LINEAR_SHAPES = ("4096x1024:32000", "2048x512:128000")
DEFAULT_SHAPES = ("4096x1000", "512x32000", "65536x10", "64x128", "1000x512@0")
QUICK_SHAPES = ("4096x1000", "256x32000", "65536x10", "64x128", "1000x512@0")
LD = np.longdouble
WARMUP_CALLS = 8
# small cells: rounds go on past the set count until a cell has had this many seconds of
# timing (full / --quick runs), up to MORE_ROUNDS times the count (see _timed_rounds)
MIN_CELL_S = (0.3, 0.05)
MORE_ROUNDS = 20
SLOW_FACTOR = 20  # see run_cell


@dataclass
class Cell:
    op: str
    shape: str
    dtype: str
    threads: int
    results: list = field(default_factory=list)
    data: str = "normal"  # cell_data's kind of logits

    @property
    def noise(self) -> float:
        """The cell's spread between rounds: the median contender's."""
        return float(np.median([r.spread for r in self.results]))


@dataclass
class Result:
    contender: str
    median_s: float
    first_call_s: float
    gbps: float
    vs_numpy: float = math.nan      # numpy baseline time / this time (>1: faster)
    vs_copy: float = math.nan       # this time / copy time (1: at the memory roofline)
    error: float = math.nan
    fastest: bool = False
    spread: float = math.nan        # (75th - 25th percentile) / median of the rounds


_SHAPE = re.compile(r"^(\d+(?:x\d+)*)(?:@(-?\d+))?$")
_LINEAR_SHAPE = re.compile(r"^(\d+)x(\d+):(\d+)$")


def parse_shape(text: str):
    """'4096x1000' -> ((4096, 1000), -1); '1000x512@0' -> ((1000, 512), 0); a linear
    cross-entropy's tokens x hidden : vocabulary '4096x1024:32000' -> ((4096, 1024, 32000),
    None)."""
    linear = _LINEAR_SHAPE.match(text.strip().lower())
    if linear:
        dims = tuple(int(d) for d in linear.groups())
        if min(dims) < 1:
            raise ValueError(f"bad shape {text!r}: sizes must be >= 1")
        return dims, None
    match = _SHAPE.match(text.strip().lower())
    dims = tuple(int(d) for d in match.group(1).split("x")) if match else ()
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"bad shape {text!r}: expected sizes >= 1 joined by x, optionally "
                         "@axis, e.g. 4096x1000 or 1000x512@0")
    axis = int(match.group(2)) if match.group(2) is not None else -1
    if not -len(dims) <= axis < len(dims):
        raise ValueError(f"bad shape {text!r}: axis {axis} is out of range for {len(dims)} "
                         "dimension(s)")
    return dims, axis


def applies(op: str, shape_text: str) -> bool:
    """Whether a cell exists: cross-entropy takes classes on the last axis of (N, K)."""
    dims, axis = parse_shape(shape_text)
    if (op in LINEAR_OPS) != (axis is None):  # linear ops take only T x D : V shapes
        return False
    return not op.startswith("cross") or (axis == -1 and len(dims) == 2)


# ----------------------------------------------------------------------------- data
DTYPES = ("float32", "float64", "float16", "bfloat16")


def as_dtype(name):
    """A bench dtype by name; bfloat16 is ml_dtypes' (``pip install -e '.[half]'``)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _wide(a):
    """Half-precision results as float32 (ml_dtypes' bfloat16 casts to float32, not to
    every NumPy type), anything else as it is."""
    a = np.asarray(a)
    return a.astype(np.float32) if a.dtype.itemsize == 2 and a.dtype.kind in "fV" else a


DATA = {"normal": "logits of std 2",
        "masked": "half the logits -inf at random, as attention and vocabulary masks leave "
                  "them"}


def cell_data(dims, dtype, with_target, data="normal", axis=-1):
    """The arrays every suite times: fixed-seed logits (std 2) and, for cross-entropy,
    integer class targets along the first axis.  ``data="masked"``: half the logits -inf
    at random, as attention and vocabulary masks leave them, but never the first of each
    slice along ``axis`` nor a target's own logit (no slice is all -inf, no loss inf)."""
    if data not in DATA:
        raise ValueError(f"data={data!r}; expected one of {list(DATA)}")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(dims) * 2).astype(as_dtype(dtype))
    target = rng.integers(0, dims[-1], dims[0]) if with_target else None
    if data == "masked":
        masked = rng.random(dims) < 0.5
        np.moveaxis(masked, axis, 0)[0] = False
        if target is not None:
            masked[np.arange(dims[0]), target] = False
        x[masked] = -np.inf
    return x, target


def linear_data(dims, dtype):
    """(hidden (T, D), classifier (V, D)) and targets for a linear cell: logits of std ~2."""
    t, d, v = dims
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((t, d), dtype=np.float64).astype(dtype)
    weight = (rng.standard_normal((v, d)) * (2 / math.sqrt(d))).astype(dtype)
    return (hidden, weight), rng.integers(0, v, t)


def traffic_bytes(op, x):
    """Bytes an op must move: read x, plus write a same-size result where it has one.  A
    linear cell: the logits' bytes (what the unfused computation writes once at least)."""
    if op in LINEAR_OPS:
        hidden, weight = x
        return hidden.shape[0] * weight.shape[0] * hidden.itemsize
    return 2 * x.nbytes if op in ("softmax", "log_softmax", "cross_entropy_with_grad") else x.nbytes


# ----------------------------------------------------------------------------- reference
def _linear_reference(op, x, target):
    """The unfused formulas in float64 (a long-double (T, V) would be GBs), 256 tokens at
    a time: (loss, d_hidden, d_weight) of the mean."""
    hidden, weight = (a.astype(np.float64) for a in x)
    n = hidden.shape[0]
    loss, d_h, d_w = 0.0, np.empty_like(hidden), np.zeros_like(weight)
    for r0 in range(0, n, 256):
        rows = slice(r0, r0 + 256)
        logits = hidden[rows] @ weight.T
        logp = _np_log_softmax(logits, -1)
        at = (np.arange(logits.shape[0]), target[rows])
        loss -= logp[at].sum()
        g = np.exp(logp)
        g[at] -= 1
        g /= n
        d_h[rows] = g @ weight
        d_w += g.T @ hidden[rows]
    return (loss / n, d_h, d_w) if op.endswith("_with_grad") else loss / n


def reference(op, x, axis, target):
    """The NumPy-baseline formulas evaluated in long double."""
    if op in LINEAR_OPS:
        return _linear_reference(op, x, target)
    xl = _wide(x).astype(LD)
    if op == "softmax":
        return np.exp(_np_log_softmax(xl, axis))
    if op == "log_softmax":
        return _np_log_softmax(xl, axis)
    if op == "logsumexp":
        return _np_logsumexp(xl, axis)
    logp = _np_log_softmax(xl, -1)
    n = x.shape[0]
    loss = -logp[np.arange(n), target].mean()
    if op == "cross_entropy":
        return loss
    grad = np.exp(logp)
    grad[np.arange(n), target] -= 1
    return loss, grad / n


def error_of(op, result, ref):
    """Max relative error (probabilities, loss); max error / max(1, |ref|) for logs; for the
    fused op the worse of loss and gradient (gradient relative to its largest entry)."""
    if op == "linear_cross_entropy_with_grad":
        errors = [error_of("cross_entropy", result[0], ref[0])]
        for got, want in zip(result[1:3], ref[1:3]):
            errors.append(float(np.max(np.abs(np.asarray(got, np.float64) - want))
                                / np.max(np.abs(want))))
        return max(errors)
    if op == "linear_cross_entropy":
        op = "cross_entropy"
    if op == "cross_entropy_with_grad":
        loss, grad = result
        g_err = np.max(np.abs(_wide(grad).astype(LD) - ref[1])) / np.max(np.abs(ref[1]))
        return max(error_of("cross_entropy", loss, ref[0]), float(g_err))
    r = _wide(result).astype(LD)
    ref = np.asarray(ref)
    if not np.array_equal(np.isnan(r), np.isnan(ref)):
        return math.inf
    exact = (r == ref) | np.isnan(ref)  # -inf log-probabilities of masked logits included
    if exact.all():
        return 0.0
    r, ref = r[~exact], ref[~exact]
    if not (np.isfinite(r).all() and np.isfinite(ref).all()):  # an infinity the other lacks
        return math.inf
    if op in ("softmax", "cross_entropy"):
        # below float16's smallest normal a half result holds few digits (bfloat16 alike)
        rd = np.asarray(result).dtype
        tiny = np.finfo(np.float16 if rd.itemsize == 2 else rd).tiny
        mask = np.abs(ref) > tiny
        return float(np.max(np.abs(r[mask] - ref[mask]) / np.abs(ref[mask]))) if mask.any() else 0.0
    return float(np.max(np.abs(r - ref) / np.maximum(1, np.abs(ref))))


# ----------------------------------------------------------------------------- contenders
def _numpy_linear(op, x, target):
    """The unfused computation in NumPy: the (T, V) logits, their softmax, the products."""
    hidden, weight = x
    n = hidden.shape[0]
    rows = np.arange(n)

    def run():
        p = _np_softmax(hidden @ weight.T, -1)
        loss = -np.log(p[rows, target]).mean()
        if op == "linear_cross_entropy":
            return loss
        p[rows, target] -= 1
        p /= n
        return loss, p @ weight, p.T @ hidden

    return run


def _numpy_baseline(op, x, axis, target):
    if op in LINEAR_OPS:
        return _numpy_linear(op, x, target)
    if op == "softmax":
        return lambda: _np_softmax(x, axis)
    if op == "log_softmax":
        return lambda: _np_log_softmax(x, axis)
    if op == "logsumexp":
        return lambda: _np_logsumexp(x, axis)
    n = x.shape[0]
    rows = np.arange(n)
    if op == "cross_entropy":
        return lambda: -_np_log_softmax(x, -1)[rows, target].mean()

    def fused():
        p = _np_softmax(x, -1)
        loss = -np.log(p[rows, target]).mean()
        p[rows, target] -= 1
        p /= n
        return loss, p

    return fused


def _np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_log_softmax(x, axis):
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def _np_logsumexp(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _torch_linear(op, x, target):
    """{"torch": F.linear + F.cross_entropy, "fastsm.torch": fastsm.torch's
    linear_cross_entropy, "torch-chunked": F.linear_cross_entropy with
    LinearCrossEntropyOptions (torch >= 2.13), where it exists}; forward + backward for
    the _with_grad op."""
    import torch

    functional = torch.nn.functional
    hidden, weight = (torch.from_numpy(a) for a in x)
    tt = torch.from_numpy(target)
    import fastsm.torch as fastsm_torch

    fns = {"torch": lambda h, w: functional.cross_entropy(functional.linear(h, w), tt),
           # fastsm's chunked loss in a torch training loop: the products on torch's BLAS
           "fastsm.torch": lambda h, w: fastsm_torch.linear_cross_entropy(h, w, tt)}
    options = getattr(torch.nn, "LinearCrossEntropyOptions", None)
    if options is not None and hasattr(functional, "linear_cross_entropy"):
        fns["torch-chunked"] = lambda h, w: functional.linear_cross_entropy(
            h, w, tt, options=options())

    def timed(fn):
        if op == "linear_cross_entropy":
            def forward():
                with torch.no_grad():
                    return fn(hidden, weight).numpy()
            return forward

        def both():
            h = hidden.detach().requires_grad_()
            w = weight.detach().requires_grad_()
            loss = fn(h, w)
            loss.backward()
            return loss.detach().numpy(), h.grad.numpy(), w.grad.numpy()
        return both

    return {name: timed(fn) for name, fn in fns.items()}


def _torch_fn(op, x, axis, target, threads):
    import torch

    torch.set_num_threads(threads)
    if op in LINEAR_OPS:
        return _torch_linear(op, x, target)
    bf16 = x.dtype.name == "bfloat16"  # torch shares ml_dtypes' bits, not its dtype
    xt = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16) if bf16 else torch.from_numpy(x)

    def back(t):
        return t.view(torch.int16).numpy().view(x.dtype) if bf16 else t.numpy()

    if op == "softmax":
        return lambda: back(torch.softmax(xt, axis))
    if op == "log_softmax":
        return lambda: back(torch.log_softmax(xt, axis))
    if op == "logsumexp":
        return lambda: back(torch.logsumexp(xt, axis))
    tt = torch.from_numpy(target)
    f = torch.nn.functional.cross_entropy
    if op == "cross_entropy":
        return lambda: back(f(xt, tt))

    def fused():
        leaf = xt.detach().requires_grad_()
        loss = f(leaf, tt)
        loss.backward()
        return back(loss.detach()), back(leaf.grad)

    return fused


def _scipy_fn(op, x, axis, target, threads):
    import scipy.special as sp

    if op in LINEAR_OPS or x.dtype.itemsize == 2:  # half: scipy computes in its own dtype
        return None
    if op in ("softmax", "log_softmax", "logsumexp"):
        fn = getattr(sp, op)
        return lambda: fn(x, axis=axis)
    return None


def _jax_fn(op, x, axis, target, threads):
    import jax
    import jax.numpy as jnp

    if op in LINEAR_OPS or x.dtype.itemsize == 2:  # (half: not measured here yet)
        return None
    jax.config.update("jax_enable_x64", True)
    xj = jnp.asarray(x)
    if op in ("softmax", "log_softmax"):
        fn = jax.jit(lambda a: getattr(jax.nn, op)(a, axis=axis))
    elif op == "logsumexp":
        fn = jax.jit(lambda a: jax.nn.logsumexp(a, axis=axis))
    else:
        tj = jnp.asarray(target)

        def loss(a):
            logp = jax.nn.log_softmax(a, axis=-1)
            return -jnp.take_along_axis(logp, tj[:, None], axis=-1).mean()

        fn = jax.jit(loss if op == "cross_entropy" else jax.value_and_grad(loss))
    return lambda: jax.block_until_ready(fn(xj))


PEERS = {"torch": _torch_fn, "scipy": _scipy_fn, "jax": _jax_fn}


def contenders(op, x, axis, target, backends, peers, threads):
    """{name: zero-argument callable} for one cell."""
    found = {}
    for name in backends:
        fn = getattr(_api, op) if op not in LINEAR_OPS else getattr(_linear, op)
        if op in LINEAR_OPS:
            found[name] = (lambda f=fn, b=name: f(x[0], x[1], target, backend=b))
        elif op.startswith("cross"):
            found[name] = (lambda f=fn, b=name: f(x, target, backend=b))
        else:
            found[name] = (lambda f=fn, b=name: f(x, axis=axis, backend=b))
    refs = references(op, x, axis, target)
    found["numpy-baseline"] = refs["numpy-baseline"]
    for peer in peers:
        try:
            fn = PEERS[peer](op, x, axis, target, threads)
        except ImportError:
            continue
        if isinstance(fn, dict):
            found.update(fn)
        elif fn is not None:
            found[peer] = fn
    if "copy" in refs:
        found["copy"] = refs["copy"]
    return found


def references(op, x, axis, target):
    """The two contenders every suite measures against: the NumPy baseline formula and a
    plain ``np.copyto`` of the same bytes (the memory roofline; not for linear cells,
    whose cost is the matrix products)."""
    if op in LINEAR_OPS:
        return {"numpy-baseline": _numpy_baseline(op, x, axis, target)}
    out = np.empty_like(x)
    return {"numpy-baseline": _numpy_baseline(op, x, axis, target),
            "copy": lambda: np.copyto(out, x)}


# ----------------------------------------------------------------------------- noise
def relative_spread(samples) -> float:
    """Interquartile range over median: 0.02 on a quiet machine, 0.2+ when something else
    competes for the cores or the memory bus."""
    q1, med, q3 = np.percentile(samples, [25, 50, 75])
    return float((q3 - q1) / med) if med > 0 else math.nan


class LoadMeter:
    """How many CPUs other processes kept busy while we measured: the machine's busy time
    (``/proc/stat``, hypervisor steal included) minus this process's own CPU time, over the
    wall time.  Where ``/proc/stat`` is missing, the 1-minute load average taken before the
    run stands in (it cannot tell our threads from others', hence 'before')."""

    BUSY = 0.25  # other processes' CPUs above which a run is called busy

    def __enter__(self):
        self.load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
        self._start = self._sample()
        return self

    def __exit__(self, *exc):
        wall0, own0, busy0 = self._start
        wall1, own1, busy1 = self._sample()
        if busy0 is None or busy1 is None:
            self.other_cpus = self.load_before
        else:
            self.other_cpus = max(0.0, ((busy1 - busy0) - (own1 - own0)) / (wall1 - wall0))
        return False

    @staticmethod
    def _sample():
        t = os.times()
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:]]
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)   # idle + iowait
            busy = (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # up to steal
        except (OSError, ValueError, IndexError):
            busy = None
        return time.monotonic(), t.user + t.system, busy

    def verdict(self, cells) -> str:
        """One line: was this a quiet run?  Figures from a busy one are not idle figures."""
        spread = float(np.median([c.noise for c in cells])) if cells else math.nan
        busy = self.other_cpus > self.BUSY or spread > 0.10
        what = (f"other processes kept {self.other_cpus:.2f} of {_threads.usable_cpus()} CPUs "
                f"busy; median spread between rounds {spread:.0%}")
        if busy:
            return (f"BUSY MACHINE: {what}. These are not idle-machine figures; "
                    "`fastsm bench --contention` measures under load on purpose.")
        return f"quiet machine: {what}."


# ----------------------------------------------------------------------------- runner
def _timed_rounds(fns, names, samples, reps, budget_s, rng, linear, min_s=0.0):
    """``reps`` rounds over ``names`` (order shuffled every round), each timed call after
    an untimed one of its own (linear cells: in the first round only), into ``samples``;
    stops after 5 rounds once ``budget_s`` is spent.  Where ``reps`` rounds take less than
    ``min_s``, more rounds follow until min_s (at most MORE_ROUNDS x reps in all): the
    median of 31 calls of ~25 us moved 10% between runs (64x128 float32
    cross_entropy_with_grad, numpy backend / NumPy baseline: 1.16, 1.09, 1.05 in three
    runs of the same build; the same calls interleaved 2000 times: 1.13-1.14 in six)."""
    start = time.perf_counter()
    for r in range(reps if linear else reps * MORE_ROUNDS):
        rng.shuffle(names)
        for name in names:
            if not linear or r == 0:
                fns[name]()
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
        spent = time.perf_counter() - start
        if r >= reps - 1 and spent >= min_s:
            break
        if r >= min(4, reps - 1) and spent > budget_s:
            break


def _slow_contenders(warm):
    """Names whose least warm-up time ``warm[name]`` is over SLOW_FACTOR times the fastest
    contender's.  The copy (the roofline) is no contender: at 64x128 it takes 1.2 us, and
    with it as the fastest a 20 us call whose last warm-up call ran over 24 us went to
    rounds of its own, in half of the runs (numpy log_softmax float32: read 21 us there,
    17 us in the shared rounds, so 0.89x the NumPy baseline instead of 1.10x)."""
    times = [t for name, t in warm.items() if name != "copy"]
    if not times:
        return []
    fastest = min(times)
    return [name for name, t in warm.items() if name != "copy" and t > SLOW_FACTOR * fastest]


def run_cell(op, shape_text, dtype, backends, peers, threads, reps, budget_s, rng,
             data="normal", min_s=0.0):
    if not applies(op, shape_text):
        return None
    dims, axis = parse_shape(shape_text)
    linear = axis is None
    if linear:
        x, target = linear_data(dims, dtype)
        # calls of seconds: one untimed call after the first, 3 timed rounds
        reps, warmup = min(reps, 3), 0
    else:
        x, target = cell_data(dims, dtype, op.startswith("cross"), data, axis)
        warmup = WARMUP_CALLS
    fns = contenders(op, x, axis, target, backends, peers, threads)
    first, samples, outputs = {}, {name: [] for name in fns}, {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        outputs[name] = fn()
        first[name] = time.perf_counter() - t0
    # untimed: past the thread controller's start (its first probes of one thread, calls
    # 2-8, landed in 5-round --quick cells) and peers' pool warm-up; steady state is timed
    warm = {}  # each contender's least warm-up time
    for _ in range(warmup):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            spent = time.perf_counter() - t0
            warm[name] = min(spent, warm.get(name, spent))
    # round-robin, order shuffled every round: drift hits every contender alike.  Each
    # contender's timed call follows an untimed one of its own, so it is timed in its own
    # steady state (as asv times a benchmark, and as a loop calls it), not in the caches and
    # allocator state the previous contender left: with NumPy's temporaries run just before,
    # cython softmax 4096x1000 read 2.55 ms instead of 1.95.
    # A contender SLOW_FACTOR times slower than the fastest (NumPy's baseline on float16:
    # ~370 ms a call against 0.5 ms) is timed after the rounds, in rounds of its own: run in
    # every round, its single-threaded stretch left the next contenders slower for the
    # rest of the round (c softmax 4096x1000 float16 510 -> 790 us, float32 913 -> 1322 us,
    # 2 threads: the idle core's wake-up), and ate the budget in 5 rounds.
    slow = _slow_contenders(warm)
    _timed_rounds(fns, [n for n in fns if n not in slow], samples, reps, budget_s, rng, linear,
                  min_s)
    for name in slow:
        _timed_rounds(fns, [name], samples, reps, budget_s, rng, linear, min_s)
    ref = reference(op, x, axis, target)
    nbytes = traffic_bytes(op, x)
    cell = Cell(op, shape_text, as_dtype(dtype).name, threads, data=data)
    med = {name: float(np.median(s)) for name, s in samples.items()}
    for name in fns:
        res = Result(name, med[name], first[name], nbytes / med[name] / 1e9,
                     spread=relative_spread(samples[name]))
        res.vs_numpy = med["numpy-baseline"] / med[name]
        res.vs_copy = med[name] / med["copy"] if "copy" in med else math.nan
        if name != "copy":
            res.error = error_of(op, outputs[name], ref)
        cell.results.append(res)
    best = min((r for r in cell.results if r.contender != "copy"), key=lambda r: r.median_s)
    best.fastest = True
    return cell


def run(ops=OPS, shapes=DEFAULT_SHAPES, dtypes=("float32", "float64"), threads=None,
        backends=None, peers=("torch", "scipy", "jax"), quick=False, progress=True,
        data="normal"):
    threads = threads or _threads.get_num_threads()
    old = _threads.get_num_threads()
    _threads.set_num_threads(threads)
    backends = list(backends or _registry.available())
    reps, budget = (5, 0.15) if quick else (31, 3.0)
    min_s = MIN_CELL_S[1] if quick else MIN_CELL_S[0]
    rng = random.Random(0)
    cells = []
    todo = [(op, s, d) for d in dtypes for s in shapes for op in ops]
    skipped = sorted({f"{op} at {s}" for op, s, _ in todo if not applies(op, s)})
    todo = [(op, s, d) for op, s, d in todo if applies(op, s)]
    if skipped and progress:
        print(f"not measured: {', '.join(skipped)} (cross-entropy takes classes on the last "
              "axis of (N, K); the linear ops take only tokens x hidden : vocabulary shapes, "
              "the others none of those)", file=sys.stderr)
    try:
        with LoadMeter() as meter:
            for i, (op, shape, dtype) in enumerate(todo):
                if progress:
                    print(f"\r[{i + 1}/{len(todo)}] {op} {shape} {dtype}".ljust(70), end="",
                          file=sys.stderr, flush=True)
                cell = run_cell(op, shape, dtype, backends, peers, threads, reps, budget, rng,
                                data, min_s)
                if cell is not None:
                    cells.append(cell)
    finally:
        _threads.set_num_threads(old)
        if progress:
            print("\r".ljust(72) + "\r", end="", file=sys.stderr, flush=True)
    return cells, meter


# ----------------------------------------------------------------------------- output
def _fmt_time(s):
    return f"{s * 1e3:.3f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"


def table(cells, markdown=False):
    head = ["op", "shape", "dtype", "contender", "median", "GB/s", "x numpy", "x copy",
            "max err", "first call"]
    rows = []
    for cell in cells:
        for r in sorted(cell.results, key=lambda r: r.median_s):
            rows.append([cell.op, cell.shape, cell.dtype,
                         r.contender + (" *" if r.fastest else ""), _fmt_time(r.median_s),
                         f"{r.gbps:.1f}", f"{r.vs_numpy:.2f}",
                         "-" if math.isnan(r.vs_copy) else f"{r.vs_copy:.2f}",
                         "-" if math.isnan(r.error) else f"{r.error:.1e}",
                         _fmt_time(r.first_call_s)])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    last = None
    for row in rows:
        if last is not None and row[:3] != last:
            lines.append("")
        last = row[:3]
        lines.append(fmt.format(*row))
    return "\n".join(lines)


def machine_line(threads):
    import platform

    return (f"{platform.processor() or platform.machine()}, {_threads.usable_cpus()} usable CPUs, "
            f"{threads} thread(s), numpy {np.__version__}, fastsm backends "
            f"{_registry.available()}")


def plot(cells, path):
    """Per (op, dtype) panel: each contender's speed-up over the NumPy baseline (log scale)
    per shape, the copy of the same bytes as a black mark (the memory roofline), the fastest
    bar labelled, one legend for the figure, a colour per contender."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(c.op, c.dtype) for c in cells}, key=lambda g: (g[1], (OPS + LINEAR_OPS).index(g[0])))
    names = []
    for cell in cells:
        for r in sorted(cell.results, key=lambda r: r.median_s):
            if r.contender not in names and r.contender != "copy":
                names.append(r.contender)
    colour = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}
    ncols = 2
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(13, 3.6 * nrows + 0.8), squeeze=False)
    for ax, (op, dtype) in zip(axes.flat, groups):
        sel = [c for c in cells if c.op == op and c.dtype == dtype]
        for i, cell in enumerate(sel):
            res = {r.contender: r for r in cell.results}
            present = [n for n in names if n in res]
            for j, name in enumerate(present):
                x = i - 0.4 + (j + 0.5) * 0.8 / len(present)
                ax.bar(x, res[name].vs_numpy, 0.8 / len(present), color=colour[name])
                if res[name].fastest:
                    ax.annotate(f"{res[name].vs_numpy:.1f}x", (x, res[name].vs_numpy),
                                ha="center", va="bottom", fontsize=7, zorder=5,
                                bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none",
                                          alpha=0.85))
            if "copy" in res:
                ax.hlines(res["copy"].vs_numpy, i - 0.45, i + 0.45, colors="k", linewidth=2)
        ax.set_yscale("log")
        ax.axhline(1.0, color="grey", linewidth=0.6)
        ax.set_xticks(range(len(sel)), [c.shape for c in sel], fontsize=8)
        ax.set_ylabel("x NumPy baseline (log)", fontsize=8)
        ax.set_title(f"{op} {dtype}", fontsize=10)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[n]) for n in names]
    handles.append(plt.Line2D([0], [0], color="k", linewidth=2))
    fig.legend(handles, names + ["np.copyto of the same bytes (memory roofline)"],
               loc="lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    fig.suptitle("speed-up over the NumPy baseline exp(x - max) / sum, higher is faster; "
                 f"{machine_line(cells[0].threads if cells else 1)}", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _backend_results(cell):
    """The fastsm backends' results of a cell, fastest first (peers and copy left out)."""
    return sorted((r for r in cell.results if r.contender in _registry.KNOWN),
                  key=lambda r: r.median_s)


def winners(cells):
    """Per (op, dtype, bucket) measured: (backend to record or None, why).

    A backend other than the default one (the registry's PREFERRED first) is recorded only when
    its lead over the default is beyond the noise of both: time ratio - 1 > max(5%, twice the
    larger spread between rounds).  A busy neighbour otherwise writes its noise into the
    table (it once made the NumPy baseline 'beat' cython)."""
    default = _registry.preferred_available()[0]
    out = {}
    for cell in cells:
        dims, axis = parse_shape(cell.shape)
        if axis != -1:
            continue
        mine = _backend_results(cell)
        if not mine:
            continue
        key = (cell.op, cell.dtype, _dispatch.bucket(int(np.prod(dims[:-1])), dims[-1]))
        best = mine[0]
        base = next((r for r in mine if r.contender == default), None)
        if best.contender == default or base is None:
            out[key] = (None, f"{best.contender} fastest (default)")
            continue
        lead = base.median_s / best.median_s - 1
        margin = max(0.05, 2 * max(best.spread, base.spread))
        if lead > margin:
            out[key] = (best.contender, f"{best.contender} {lead:.0%} ahead of {default} "
                                        f"(noise {margin:.0%})")
        else:
            out[key] = (None, f"{best.contender} {lead:.0%} ahead of {default}, within "
                              f"noise {margin:.0%}: not recorded")
    return out


def dispatch_report(cells):
    """Per cell: the backend a call without ``backend=`` runs, and the measured fastest."""
    lines = []
    for cell in cells:
        dims, axis = parse_shape(cell.shape)
        if axis is None:  # a linear cell runs the cross-entropy kernels on its chunks
            op = "cross_entropy_with_grad" if cell.op.endswith("_with_grad") else "cross_entropy"
            chosen = _dispatch.choose(op, cell.dtype, dims[0], dims[2])
        else:
            n, k = int(np.prod(dims)) // dims[axis], dims[axis]
            chosen = _dispatch.choose(cell.op, cell.dtype, n, k)
        mine = _backend_results(cell)
        if not mine:
            continue
        times = ", ".join(f"{r.contender} {r.median_s / mine[0].median_s:.2f}" for r in mine)
        lines.append(f"{cell.op} {cell.shape} {cell.dtype}: runs {chosen} "
                     f"(time / fastest: {times})")
    return lines


def save_winners(cells, meter=None, out=None):
    """Store the recorded winners as this machine's table; print what changed and why."""
    out = out or sys.stdout
    decided = winners(cells)
    table_ = {key: name for key, (name, _) in decided.items() if name}
    old = _tuning.load_table()
    path = _tuning.save_table(table_, machine_line(cells[0].threads if cells else 1))
    _dispatch.reset()
    if meter is not None:
        print(meter.verdict(cells), file=out)
    for key, (name, why) in sorted(decided.items()):
        before, after = old.get(key), table_.get(key)
        mark = "=" if before == after else ("+" if before is None else
                                             "-" if after is None else "~")
        change = "" if before == after else f"  [{before or 'default'} -> {after or 'default'}]"
        print(f"  {mark} {' '.join(key)}: {why}{change}", file=out)
    print(f"saved {len(table_)} dispatch entries to {path}", file=out)
    return path, table_


def tune(quick: bool = True, progress: bool = True):
    """Measure every backend on this machine and store the per-shape winners.

    Runs the benchmark grid (``fastsm bench --quick --save``), shows progress, prints what
    it changed, and records a winner only if its lead is beyond the measured noise; later
    calls without ``backend=`` use the stored table.  Returns the path of the table."""
    cells, meter = run(quick=quick, peers=(), progress=progress)
    return save_winners(cells, meter)[0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``fastsm bench`` (also used by ``fastsm``'s subcommand)."""
    p.add_argument("--quick", action="store_true", help="float32, fewer repeats: under a minute")
    p.add_argument("--ops", default=",".join(OPS),
                   help="comma-separated ops (also " + ", ".join(LINEAR_OPS) + ")")
    p.add_argument("--shapes", default=None,
                   help="e.g. 4096x1000,64x128,1000x512@0 (@axis); linear ops: tokens x "
                        "hidden : vocabulary, e.g. 4096x1024:32000 (default "
                        f"{','.join(LINEAR_SHAPES)})")
    p.add_argument("--dtypes", default=None, help="comma-separated, of " + ",".join(DTYPES)
                   + " (bfloat16: ml_dtypes); default float32,float64 (--quick: float32)")
    p.add_argument("--threads", type=int, default=None, help="threads for every contender")
    p.add_argument("--backends", default=None, help="fastsm backends (default: all available)")
    p.add_argument("--peers", default="torch,scipy,jax",
                   help="peers to include if installed (torch,scipy,jax; 'none' for none)")
    p.add_argument("--data", default="normal", choices=list(DATA),
                   help="the logits: " + "; ".join(f"{k}: {v}" for k, v in DATA.items()))
    p.add_argument("--json", metavar="PATH", help="write results as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the table as Markdown")
    p.add_argument("--plot", metavar="PATH",
                   help="write a PNG of each contender's speed-up over the NumPy baseline "
                        "(needs matplotlib: pip install -e '.[bench]')")
    p.add_argument("--save", action="store_true",
                   help="store the measured winners as this machine's dispatch table")
    p.add_argument("--contention", action="store_true",
                   help="measure idle, beside a busy 2-thread process, in a forked worker "
                        "and with 8 callers at once (default: softmax and "
                        "cross_entropy_with_grad, 4096x1000 float32)")


def _checked(args, p):
    """(ops, shapes, dtypes, peers, backends) from the options, or a usage error (exit 2)
    naming the bad value: all of it before anything long runs."""
    ops = [o for o in args.ops.split(",") if o]
    bad = [o for o in ops if o not in OPS + LINEAR_OPS]
    if bad:
        p.error(f"unknown op(s) {bad}; expected some of {list(OPS + LINEAR_OPS)}")
    if args.shapes:
        shapes = args.shapes.split(",")
    else:
        shapes = [s for s in (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
                  if any(o not in LINEAR_OPS for o in ops)]
        shapes += list(LINEAR_SHAPES) if any(o in LINEAR_OPS for o in ops) else []
    for s in shapes:
        try:
            parse_shape(s)
        except ValueError as exc:
            p.error(str(exc))
    dtypes = (args.dtypes or ("float32" if args.quick else "float32,float64")).split(",")
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        p.error(f"unknown dtype(s) {bad}; expected some of {list(DTYPES)}")
    if "bfloat16" in dtypes:
        try:
            as_dtype("bfloat16")
        except ImportError:
            p.error("--dtypes bfloat16 needs ml_dtypes: pip install -e '.[half]'")
    if any(o in LINEAR_OPS for o in ops) and set(dtypes) - {"float32", "float64"}:
        p.error("the linear ops take float32 or float64")
    peers = [q for q in args.peers.split(",") if q and q != "none"]
    if set(peers) - set(PEERS):
        p.error(f"unknown peer(s) {sorted(set(peers) - set(PEERS))}; expected some of {list(PEERS)} or none")
    backends = args.backends.split(",") if args.backends else None
    for b in backends or ():
        try:
            _registry.load(b)
        except (ValueError, ImportError) as exc:
            p.error(str(exc))
    check_threads(args.threads, p)
    if args.data != "normal" and args.save:
        p.error(f"--data {args.data} with --save: the dispatch table is measured on normal "
                "data")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib, which is not installed: "
                    "pip install -e '.[bench]' (or pip install matplotlib)")
    return ops, shapes, dtypes, peers, backends


def check_threads(threads, p) -> None:
    """A usage error naming ``--threads`` unless it is unset or a count >= 1."""
    if threads is not None and threads < 1:
        p.error(f"--threads {threads}: expected a count >= 1")


def run_cli(args, p) -> int:
    """``fastsm bench`` with parsed options; ``p`` reports usage errors."""
    ops, shapes, dtypes, peers, backends = _checked(args, p)
    threads = args.threads or _threads.get_num_threads()
    if args.contention:
        return _contention_main(args, threads)
    cells, meter = run(ops, shapes, dtypes, threads, backends, peers, args.quick,
                       data=args.data)
    print(f"fastsm bench — {machine_line(threads)}")
    if args.data != "normal":
        print(f"data: {args.data} ({DATA[args.data]})")
    print("median per call; x numpy = NumPy-baseline time / time (higher is faster); "
          "x copy = time / np.copyto time (1 = memory roofline); * = fastest\n")
    print(table(cells))
    report = dispatch_report(cells)
    print("\nwithout backend=, fastsm runs (dispatch table or default order; `fastsm tune` measures):")
    print("\n".join("  " + line for line in report))
    print("\n" + meter.verdict(cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_line(threads), "threads": threads,
                       "cells": [asdict(c) for c in cells]}, f, indent=1)
        print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            data = f"Data: {args.data} ({DATA[args.data]})\n\n" if args.data != "normal" else ""
            f.write(f"Machine: {machine_line(threads)}\n\n{data}{table(cells, markdown=True)}\n\n"
                    "Without `backend=`, fastsm runs:\n\n" + "".join(f"- {line}\n" for line in report)
                    + f"\n{meter.verdict(cells)}\n")
        print(f"wrote {args.markdown}")
    if args.plot:
        plot(cells, args.plot)
        print(f"wrote {args.plot}")
    if args.save:
        print()
        save_winners(cells)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="fastsm bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run_cli(p.parse_args(argv), p)


def _contention_main(args, threads):
    from . import loadbench

    ops = args.ops.split(",") if args.ops != ",".join(OPS) else ("softmax",
                                                                "cross_entropy_with_grad")
    shape = args.shapes.split(",")[0] if args.shapes else "4096x1000"
    if not all(applies(op, shape) for op in ops):
        raise SystemExit(f"fastsm bench --contention: {shape} does not fit every op of {ops}")
    dtype = (args.dtypes or "float32").split(",")[0]
    result = loadbench.run(ops, shape, dtype, threads, rounds=15 if args.quick else 80,
                           callers_rounds=3 if args.quick else 7, data=args.data)
    text = loadbench.report(result)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("```\n" + text + "\n```\n")
        print(f"wrote {args.markdown}")
    return 0
