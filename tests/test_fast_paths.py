"""The paths taken only where the data allows them, checked where they apply and where they
hand over: the exponentials with no max subtracted (the numpy backend's rows of up to 256
classes, where the block's range allows, and its non-last-axis kernels, while no
floating-point flag rises), and the caller's own np.seterr, which no backend may let
through."""

import numpy as np
import pytest

import fastsm

from . import oracle
from .checks import assert_cross_entropy, assert_logs, assert_probabilities

DTYPES = [np.float32, np.float64]


def _edge_rows(dtype, n=48, k=130, seed=0):
    """Rows around the limits of exp's normal range in ``dtype``: ordinary, near the top
    (the sums of exp(x) overflow), near the bottom (exp(x) leaves the normal range),
    -inf masks (exp gives 0 with no flag), confident rows (log terms far below 1), one
    row each of +inf, NaN and all -inf, one whose exp(x - m) underflows and the widest
    rows the numpy backend's row kernels take with no shift (their probabilities, times
    the mean's scale, underflow)."""
    rng = np.random.default_rng(seed)
    hi = 86.0 if dtype == np.float32 else 707.0
    x = rng.standard_normal((n, k)) * 2.0
    x[4:8] += hi                         # exp(x) near the top: the sums overflow
    x[8:12] -= hi + 4.0                  # exp(x) below the normal range
    x[12:16, ::3] = -np.inf              # masks
    x[16:20] -= 30.0
    x[16:20, 0] += 30.0                  # confident
    x[20:24] += hi / 2                   # large, still in range
    x[24, 5] = np.inf
    x[25, 7] = np.nan
    x[26] = -np.inf
    x[27, ::2] -= 800.0                  # exp(x - m) underflows, even in float64
    x[28], x[28, 0] = -39.9, 39.9        # the widest rows with no shift in float32,
    x[29], x[29, 0] = -349.0, 349.0      # and in float64
    x[30], x[30, 0] = -60.0, 60.0        # sum_c exp(x_c) / exp(m) underflows in float32
    return x.astype(dtype)


def _cases(dtype):
    """(name, array, axis): the edge rows as rows (axis -1) and as columns (axis 0), and
    blocks whose every row is of one kind (a flag in any row sends a whole block back)."""
    x = _edge_rows(dtype)
    yield "rows", x, -1
    yield "columns", np.ascontiguousarray(x.T), 0
    for lo, hi in ((0, 4), (4, 8), (8, 12), (12, 16), (16, 20), (20, 24), (28, 29), (29, 30),
                   (30, 31)):
        part = x[lo:hi].repeat(8, axis=0)
        yield f"rows{lo}-{hi}", part, -1
        yield f"columns{lo}-{hi}", np.ascontiguousarray(part.T), 0
    # masked blocks (-inf passes the numpy backend's unshifted test) that must still fail
    # it: one unmasked value whose exp(x) underflows, one row all -inf
    far = x[12:16].repeat(8, axis=0)
    far[3, 1] = -100.0 if dtype == np.float32 else -800.0
    empty = x[12:16].repeat(8, axis=0)
    empty[5] = -np.inf
    for name, part in (("masked, one far below", far), ("masked, one row all -inf", empty)):
        yield name, part, -1
        yield name + " (columns)", np.ascontiguousarray(part.T), 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_edges_of_the_exponential_range_match_the_oracle(backend, dtype):
    for name, x, axis in _cases(dtype):
        what = f"{backend} {name}"
        assert_probabilities(fastsm.softmax(x, axis=axis, backend=backend),
                             oracle.softmax(x, axis), dtype, f"softmax {what}")
        assert_logs(fastsm.log_softmax(x, axis=axis, backend=backend),
                    oracle.log_softmax(x, axis), dtype, f"log_softmax {what}", x, axis)
        assert_logs(fastsm.logsumexp(x, axis=axis, backend=backend), oracle.logsumexp(x, axis),
                    dtype, f"logsumexp {what}", x, axis, reduced=True)
        if axis == -1:
            target = np.arange(x.shape[0]) % x.shape[1]
            target[1::4] = np.argmax(np.nan_to_num(x[1::4], nan=0.0), axis=1)  # loss far below 1
            loss, grad = fastsm.cross_entropy_with_grad(x, target, reduction="none",
                                                        backend=backend)
            assert_cross_entropy(loss, grad, x, target, {"reduction": "none"}, dtype,
                                 f"cross_entropy {what}")


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_along_axis_0_into_its_own_input(backend, dtype, op):
    """out=x along a non-last axis, with values that make the numpy backend's unshifted
    sums give up after writing exponentials, and confident columns that its log_softmax
    recomputes from x through the row kernels: both must read the input, not what was
    written over it (log_softmax of its own output differs in the last bits)."""
    x = _edge_rows(dtype).T.copy()
    x[:, :3] -= 2000.0  # exp underflows in these columns
    want = getattr(fastsm, op)(x.copy(), axis=0, backend=backend)
    got = getattr(fastsm, op)(x, axis=0, out=x, backend=backend)
    assert got is x
    np.testing.assert_array_equal(got, want)


def _unshifted_columns(dtype, rows=300, cols=300, seed=1):
    """(name, array) for softmax along axis 0 around the c backend's float32 pass with no
    max (columns in [-40, 40] or -inf): tiles of 256 columns and a masked tail of 44,
    values at the bounds, -inf masks, and columns that leave the range only in their last
    row, after that pass has written exp(x) for every row above."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)) * 8.0
    x = np.clip(x, -40.0, 40.0)
    x[::7, 3::5] = -np.inf
    x[0, :20], x[1, 20:40] = 40.0, -40.0
    yield "in range", x.astype(dtype)
    for name, value in (("above", 40.5), ("below", -40.5), ("nan", np.nan), ("+inf", np.inf)):
        late = x.copy()
        late[-1, 260] = value  # the second tile, its last row
        late[-1, 17] = value   # and the first
        yield f"last row {name}", late.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unshifted_columns_hand_over_in_their_last_row(backend, dtype):
    for name, x in _unshifted_columns(dtype):
        want = oracle.softmax(x, 0)
        assert_probabilities(fastsm.softmax(x, axis=0, backend=backend), want, dtype,
                             f"{backend} {name}")
        out = np.full_like(x, 7.0)
        assert fastsm.softmax(x, axis=0, out=out, backend=backend) is out
        assert_probabilities(out, want, dtype, f"{backend} {name} out=")


OPS = ("softmax", "log_softmax", "logsumexp")


@pytest.mark.parametrize("dtype", DTYPES)
def test_callers_seterr_all_raise_is_not_ours(backend, dtype):
    """A caller running under np.seterr(all="raise") (or np.errstate) gets results, not
    FloatingPointError: exp underflows on most real data, inf - inf makes the NaN rows
    owe, and neither is the caller's error.  (The numpy backend raised here once.)"""
    wide = _edge_rows(dtype)[28:29].repeat(4096, axis=0)  # the gradient's scale underflows
    for name, x, axis in [*_cases(dtype), ("wide rows x4096", wide, -1)]:
        want = [getattr(fastsm, op)(x, axis=axis, backend=backend) for op in OPS]
        target = np.arange(x.shape[0]) % x.shape[1]
        if axis == -1:
            want.append(fastsm.cross_entropy_with_grad(x, target, backend=backend)[1])
        with np.errstate(all="raise"):
            got = [getattr(fastsm, op)(x, axis=axis, backend=backend) for op in OPS]
            if axis == -1:
                got.append(fastsm.cross_entropy_with_grad(x, target, backend=backend)[1])
        for op, a, b in zip(OPS + ("cross_entropy_with_grad",), got, want):
            np.testing.assert_array_equal(a, b, err_msg=f"{op} {name}")


def _modules_with(attr):
    from fastsm import _registry
    mods = [_registry.load(name) for name in fastsm.backends()]
    return [pytest.param(m, id=m.NAME) for m in mods if getattr(m, attr, None) is not None]


def test_registry_gives_every_backend_the_optional_entries_the_front_reads():
    """The front reads count_ignored and ce_index_plain as attributes on every small call:
    a backend without one has it as None, never an AttributeError."""
    from fastsm import _registry
    for name in fastsm.backends():
        mod = _registry.load(name)
        for attr in _registry.OPTIONAL:
            assert hasattr(mod, attr), (name, attr)
            assert getattr(mod, attr) is None or callable(getattr(mod, attr)), (name, attr)


@pytest.mark.parametrize("mod", _modules_with("ce_index_plain"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_plain_call_kernel_equals_ce_index(mod, dtype):
    """ce_index_plain (the front's call once it has found every target a class) gives bit
    for bit what ce_index gives with unit weights: on the edge rows (in range, out of
    range, masked, NaN: its unshifted block and its hand-over), with and without the
    gradient, and on a call larger than one block."""
    big = np.random.default_rng(3).standard_normal((1100, 130)).astype(dtype)
    cases = [(name, x) for name, x, axis in _cases(dtype) if axis == -1] + [("big", big)]
    for name, x in cases:
        n, k = x.shape
        target = (np.arange(n) * 7) % k
        target[1::4] = np.argmax(np.nan_to_num(x[1::4], nan=0.0), axis=1)
        for with_grad in (False, True):
            loss, loss_p = np.empty(n), np.empty(n)
            grad = np.empty_like(x) if with_grad else None
            grad_p = np.empty_like(x) if with_grad else None
            total = mod.ce_index(x, target, np.ones(k), -100, 0.0, 1.0 / n, loss, grad, 0.0,
                                 None, None, 1)
            total_p = mod.ce_index_plain(x, target, 1.0 / n, loss_p, grad_p, 1)
            np.testing.assert_array_equal(loss_p, loss, err_msg=f"{name} grad={with_grad}")
            assert total_p == total
            if with_grad:
                np.testing.assert_array_equal(grad_p, grad, err_msg=name)
