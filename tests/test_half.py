"""float16 and bfloat16 (``ml_dtypes``): 16-bit in and out, float32 inside, every backend.

Backends with half kernels (``HALF_KINDS``: c) read and write the 16-bit values
themselves; the others go through a float32 copy.  Either way the bar is the issue's:
each result within 1 ulp of the half type of the exact value (the long-double oracle on
the half input, which widens exactly), over the shared array generator; the
cross-entropy's gradient, whose float32 value carries cancellation near p = 1, within
1 ulp of the half type of the same backend's float32 gradient (itself held to the oracle
by test_cross_entropy.py).
"""

from __future__ import annotations

import numpy as np
import pytest

import fastsm
from fastsm import _registry

from . import oracle
from .arrays import cases

try:
    import ml_dtypes
except ImportError:  # the [half] extra is absent: bfloat16 cases skip
    ml_dtypes = None

HALF = ["float16", "bfloat16"]
NATIVE = [name for name in fastsm.backends()
          if getattr(_registry.load(name), "HALF_KINDS", None)]


def _dtype(name):
    if name == "bfloat16":
        if ml_dtypes is None:
            pytest.skip("bfloat16 needs ml_dtypes (pip install -e '.[half]')")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _wide(a):
    return np.asarray(a).astype(np.float32).astype(np.longdouble)


def _ulp(ref, dt):
    """The half type's spacing at |ref| rounded to it (inf at its largest finite value)."""
    with np.errstate(over="ignore", invalid="ignore"):
        mag = np.abs(np.asarray(ref, np.float64)).astype(np.float32).astype(dt)
        bits = mag.view(np.uint16)
        up = np.where(bits < 0x7fff, bits + 1, bits).astype(np.uint16).view(dt)
        return _wide(up) - _wide(mag)


def assert_within_one_ulp(actual, ref, dt, what):
    actual, ref = np.asarray(actual), np.asarray(ref, np.longdouble)
    assert actual.dtype == dt, f"{what}: dtype {actual.dtype}, expected {dt}"
    a = _wide(actual)
    assert np.array_equal(np.isnan(a), np.isnan(ref)), f"{what}: NaN positions differ"
    fin = np.isfinite(ref) & ~np.isnan(a)
    with np.errstate(over="ignore"):
        rounds_to_inf = np.isinf(_wide(ref.astype(np.float64).astype(np.float32).astype(dt)))
    inf = np.isinf(ref) | (fin & rounds_to_inf)
    with np.errstate(over="ignore"):  # the finite ones that round to inf
        rounded = _wide(ref[inf].astype(np.float64).astype(np.float32).astype(dt))
    assert np.array_equal(a[inf], rounded), f"{what}: inf mismatch"
    fin &= ~rounds_to_inf
    err = np.abs(a[fin] - ref[fin])
    bar = _ulp(ref[fin], dt)
    if err.size:
        worst = int(np.argmax(err - bar))
        assert (err <= bar).all(), (f"{what}: error {float(err[worst]):.3g} > 1 ulp "
                                    f"{float(bar[worst]):.3g} at {float(ref[fin][worst]):.6g}")


@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_every_case_within_one_half_ulp(backend, half, op):
    dt = _dtype(half)
    checked = 0
    for case, x, axis in cases(dt):
        got = getattr(fastsm, op)(x, axis=axis, backend=backend)
        ref = getattr(oracle, op)(x, axis)
        assert_within_one_ulp(got, ref, dt, f"{backend} {op} {case}")
        assert got.shape == ref.shape
        checked += 1
    assert checked > 500


@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("shape", [(37, 9), (33, 130), (3, 9000), (4, 5, 6)])
def test_cross_entropy_within_one_half_ulp(backend, half, shape):
    dt = _dtype(half)
    rng = np.random.default_rng(len(shape) + shape[-1])
    x = (rng.standard_normal(shape) * 3).astype(dt)
    x.reshape(-1, shape[-1])[::7, 0] = -np.inf  # masked classes
    target = rng.integers(0, shape[-1], shape[:-1])
    target.reshape(-1)[::5] = -100
    soft = rng.random(shape)
    soft = (soft / soft.sum(-1, keepdims=True)).astype(dt)
    x32 = x.astype(np.float32)
    weight = rng.random(shape[-1]) + 0.5
    for tgt, options in ((target, {}), (target, {"label_smoothing": 0.1, "z_loss": 1e-3}),
                         (target, {"z_loss": 1e-3, "weight": weight}), (soft, {})):
        for reduction in ("none", "mean"):
            what = f"{backend} ce {shape} {tgt.dtype} {options} {reduction}"
            loss, grad = fastsm.cross_entropy_with_grad(x, tgt, reduction=reduction,
                                                        backend=backend, **options)
            t32 = tgt.astype(np.float32) if tgt is soft else tgt
            loss32, grad32 = fastsm.cross_entropy_with_grad(x32, t32, reduction=reduction,
                                                            backend=backend, **options)
            assert_within_one_ulp(grad, grad32, dt, what + " grad")
            assert_within_one_ulp(loss, loss32, dt, what + " loss")
            if not options:
                assert_within_one_ulp(loss, oracle.cross_entropy(x, t32, reduction), dt,
                                      what + " loss vs oracle")
            # the loss alone: the one-sweep half kernels' shorter exp (rowops.c) where the
            # gradient is not asked for, so within 1 ulp of the loss above, not its bits
            assert_within_one_ulp(fastsm.cross_entropy(x, tgt, reduction=reduction,
                                                       backend=backend, **options),
                                  loss32, dt, what + " loss alone")


@pytest.mark.parametrize("half", HALF)
def test_half_results_are_the_float32_ones_within_one_half_ulp(backend, half):
    """Computed in float32 (with a shorter exp where the kernels have their own half
    path), rounded once: within 1 ulp of the half type of the float32 result, element by
    element; out= and in place too, the input untouched."""
    dt = _dtype(half)
    x = (np.random.default_rng(5).standard_normal((300, 77)) * 4).astype(dt)
    x0 = x.copy()
    for op in ("softmax", "log_softmax", "logsumexp"):
        want = getattr(fastsm, op)(x.astype(np.float32), backend=backend)
        assert_within_one_ulp(getattr(fastsm, op)(x, backend=backend), want, dt, op)
    out = np.empty_like(x)
    assert fastsm.softmax(x, out=out, backend=backend) is out
    assert_within_one_ulp(out, fastsm.softmax(x.astype(np.float32)), dt, "softmax out=")
    y = x.copy()
    assert fastsm.log_softmax(y, out=y, backend=backend) is y
    assert_within_one_ulp(y, fastsm.log_softmax(x.astype(np.float32)), dt, "in place")
    np.testing.assert_array_equal(x.view(np.uint16), x0.view(np.uint16))


@pytest.mark.skipif(not NATIVE, reason="no backend with half kernels loads here")
@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("half", HALF)
def test_half_conversions_match_numpy_bit_for_bit(half, portable):
    """The kernels' own conversions (the CPU's float16 instructions where it has them, and
    the portable integer code): every one of the 65536 half values widened, and float32
    values rounded (ties to even at every exponent, subnormals, overflow to inf, NaN kept),
    against NumPy's float16 / ml_dtypes' bfloat16 casts."""
    dt = _dtype(half)
    mod = _registry.load(NATIVE[0])
    code = mod.HALF_KINDS[half]
    every = np.arange(65536, dtype=np.uint16)
    wide = np.empty(65536, np.float32)
    mod.half_widen(every, wide, code, portable)
    want = every.view(dt).astype(np.float32)
    same = (wide.view(np.uint32) == want.view(np.uint32)) | (np.isnan(wide) & np.isnan(want))
    assert same.all(), every[~same][:5]
    # float32 inputs: the midpoints between neighbouring half values (exact ties) and
    # their float32 neighbours, plus random bit patterns
    finite = want[np.isfinite(want) & (every < 0x7fff)].astype(np.float64)
    finite = np.unique(finite)
    mid = ((finite[:-1] + finite[1:]) / 2).astype(np.float32)
    near = np.concatenate([mid, np.nextafter(mid, np.float32(np.inf)),
                           np.nextafter(mid, np.float32(-np.inf))])
    rng = np.random.default_rng(0)
    rand = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([near, -near, rand, np.float32([np.inf, -np.inf, np.nan, 0.0, -0.0,
                                                       65504, 65519.99, 65520, 1e-8, 3e38])])
    got = np.empty(x.size, np.uint16)
    mod.half_round(x, got, code, portable)
    with np.errstate(over="ignore", invalid="ignore"):
        expect = x.astype(dt).view(np.uint16)
    nan = np.isnan(x)
    assert np.isnan(got[nan].view(dt).astype(np.float32)).all()
    bad = (got != expect) & ~nan
    assert not bad.any(), (x[bad][:5], got[bad][:5], expect[bad][:5])


def test_bfloat16_is_recognised_without_fastsm_importing_ml_dtypes():
    dt = _dtype("bfloat16")
    x = np.array([[0.0, 1.0, 2.0]], dt)
    p = fastsm.softmax(x)
    assert p.dtype == dt
    np.testing.assert_allclose(p.astype(np.float32), [[0.0900, 0.2447, 0.6652]], rtol=4e-3)


def _long_rows(K, dt, rng):
    """Rows of every kind the one-sweep half kernels meet (rowops.c, K >= 128): ordinary,
    wide (std 30: exponentials below the half types' range), confident (a sum below 2: the
    log ops' float32 path), masked, and the non-finite rows that take the float32 path."""
    rows = [rng.standard_normal(K) * 3, rng.standard_normal(K) * 30, rng.standard_normal(K)]
    rows[2][K // 3] = 25.0
    masked = rng.standard_normal(K) * 3
    masked[rng.random(K) < 0.5] = -np.inf
    masked[K - 1] = 1.0
    rows.append(masked)
    for special in (np.inf, np.nan, -np.inf):
        r = rng.standard_normal(K)
        r[K - 2] = special
        rows.append(r)
    rows += [np.full(K, -np.inf), np.full(K, 1e4 if dt == np.float16 else 3e4),
             np.linspace(-1e4, 1e4, K), -rng.random(K) * 1e-3]
    # the span (rowops.c): all negative (m from a pass of its own), with a negative NaN,
    # all positive (lo bounded by +0), ranges either side of a narrow row's 64, |m| > 4096,
    # and a narrow confident row near |m| = 4096, where m log2(e)'s rounding shows
    neg_nan = -20.0 - rng.random(K) * 3
    neg_nan[K // 2] = -np.nan
    rows += [-20.0 - rng.random(K) * 3, -300.0 - rng.random(K) * 100, neg_nan,
             1.0 + rng.random(K), 100.0 + rng.random(K), np.linspace(-40.0, 24.0, K),
             np.linspace(-41.0, 24.0, K), 5000.0 + rng.standard_normal(K) * 3]
    near_4096 = 3980.0 + 2.0 * rng.integers(0, 5, K)  # confident, m log2(e) rounded in float
    near_4096[K // 4] = 4010.0
    confident_negative = np.full(K, -50.0)
    confident_negative[K // 5] = -10.0
    rows += [near_4096, confident_negative]
    return np.array(rows).astype(dt)


@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("K", [32, 47, 64, 128, 161, 1000, 2100])
def test_long_half_rows_every_row_kind(backend, half, K):
    """Long rows (the c backend's one-sweep half kernels from 32 classes, softmax's from 64:
    tails of 1-31 elements, two FSM_CHUNKs at 2100), every row kind, against the oracle;
    out= and in place too; and the index cross-entropy, loss and gradient, which has its own
    one-sweep kernel, with an ignored target, a class weight and a z-loss."""
    dt = _dtype(half)
    x = _long_rows(K, dt, np.random.default_rng(K))
    x = np.concatenate([x, x[::-1]])  # a row of each kind at both ends of a thread's share
    x0 = x.copy()
    for op in ("softmax", "log_softmax", "logsumexp"):
        ref = getattr(oracle, op)(x, -1)
        assert_within_one_ulp(getattr(fastsm, op)(x, backend=backend), ref, dt, f"{op} {K}")
        if op != "logsumexp":
            y = x.copy()
            assert getattr(fastsm, op)(y, out=y, backend=backend) is y
            assert_within_one_ulp(y, ref, dt, f"{op} {K} in place")
    target = np.random.default_rng(0).integers(0, K, x.shape[0])
    target[3] = -100
    target[4] = K - 2  # its row's logit there is +inf, NaN or -inf
    weight = np.linspace(0.5, 2.0, K)
    x32 = x.astype(np.float32)
    for options in ({}, {"weight": weight}, {"z_loss": 1e-3}):
        loss = fastsm.cross_entropy(x, target, reduction="none", backend=backend, **options)
        want = fastsm.cross_entropy(x32, target, reduction="none", backend=backend, **options)
        assert_within_one_ulp(loss, want, dt, f"cross_entropy {K} {options}")
        loss, grad = fastsm.cross_entropy_with_grad(x, target, reduction="none",
                                                    backend=backend, **options)
        want, want_grad = fastsm.cross_entropy_with_grad(x32, target, reduction="none",
                                                         backend=backend, **options)
        assert_within_one_ulp(loss, want, dt, f"cross_entropy_with_grad {K} {options} loss")
        assert_within_one_ulp(grad, want_grad, dt, f"cross_entropy_with_grad {K} {options}")
    np.testing.assert_array_equal(x.view(np.uint16), x0.view(np.uint16))


@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_half_cross_entropy_reductions(backend, half, reduction):
    """The front's short path for the common call (2-D logits, int64 targets, mean or sum)
    takes half logits too: the loss and gradient within 1 ulp of the float32 call's, with an
    ignored target, and every finite row kind of _long_rows."""
    dt = _dtype(half)
    rng = np.random.default_rng(5)
    x = _long_rows(200, dt, rng)
    x = x[np.isfinite(x.astype(np.float32)).all(axis=1)]
    x = np.concatenate([x, rng.standard_normal((300, 200)).astype(dt)])
    target = rng.integers(0, 200, x.shape[0])
    target[7] = -100
    x32 = x.astype(np.float32)
    loss = fastsm.cross_entropy(x, target, reduction=reduction, backend=backend)
    want = fastsm.cross_entropy(x32, target, reduction=reduction, backend=backend)
    assert_within_one_ulp(loss, want, dt, f"cross_entropy {reduction}")
    loss, grad = fastsm.cross_entropy_with_grad(x, target, reduction=reduction, backend=backend)
    want, want_grad = fastsm.cross_entropy_with_grad(x32, target, reduction=reduction,
                                                     backend=backend)
    assert_within_one_ulp(loss, want, dt, f"cross_entropy_with_grad {reduction}")
    assert_within_one_ulp(grad, want_grad, dt, f"cross_entropy_with_grad {reduction} grad")


def test_half_kernels_benchmark_runs(capsys):
    """benchmarks/half_kernels.py (the kernel-only half-vs-float32 figures of the README)
    runs on a tiny shape and prints a line per backend, thread count and op."""
    pytest.importorskip("ml_dtypes")
    from benchmarks import half_kernels

    half_kernels.main(["--shape", "8x64", "--threads", "1", "--rounds", "1", "--calls", "1"])
    lines = capsys.readouterr().out.splitlines()
    ops = [line.split()[3] for line in lines[1:]]
    assert ops and set(ops) == {"softmax", "log_softmax", "cross_entropy"}
    assert all("bfloat16" in line and "x f32" in line for line in lines[1:])


@pytest.mark.skipif(not NATIVE, reason="no backend with half kernels loads here")
@pytest.mark.parametrize("half", HALF)
def test_half_kernels_give_the_same_bits_on_any_number_of_threads(half):
    """The half kernels split rows into chunks claimed by the threads (c_kernels.pyx,
    _run_half): several chunks per thread here, with a row of every kind at the chunks'
    edges, and every result bit for bit the one-thread answer."""
    from fastsm import _registry

    mod = _registry.load("c")
    dt = _dtype(half)
    K = 640
    rows = _long_rows(K, dt, np.random.default_rng(5))
    x = np.concatenate([rows, np.random.default_rng(6).standard_normal((2000, K)).astype(dt)])
    x[409:430] = rows[: 430 - 409]  # around the first chunk's end (409 rows of 640)
    x[-len(rows):] = rows
    code = mod.HALF_KINDS[half]
    bits = x.view(np.uint16)
    n = x.shape[0]
    target = np.arange(n) % K
    for op in ("softmax", "log_softmax", "logsumexp"):
        outs = []
        for nt in (1, 2, 3):
            out = np.empty(n if op == "logsumexp" else (n, K), np.uint16)
            getattr(mod, op + "_half")(bits, out, code, nt)
            outs.append(out)
        for out in outs[1:]:
            np.testing.assert_array_equal(out, outs[0], err_msg=op)
    answers = []
    for nt in (1, 2, 3):
        loss, grad = np.empty(n), np.empty((n, K), np.uint16)
        mod.ce_index_half(bits, code, target, np.ones(K), -100, 0.0, 1.0 / n, loss, grad, 0.0,
                          None, None, nt)
        answers.append((loss, grad))
    for loss, grad in answers[1:]:
        np.testing.assert_array_equal(loss, answers[0][0])
        np.testing.assert_array_equal(grad, answers[0][1])
