"""Every backend against the long-double oracle over the shared array generator."""

import numpy as np
import pytest

import fastsm

from . import oracle
from .arrays import cases, values
from .checks import assert_cross_entropy, assert_logs, assert_probabilities

DTYPES = [np.float32, np.float64]


def _run(op, backend, arr, axis):
    before = arr.copy()
    result = getattr(fastsm, op)(arr, axis=axis, backend=backend)
    np.testing.assert_array_equal(arr, before, err_msg="input was modified")
    return result


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_elementwise_ops_match_oracle(backend, op, dtype):
    checker = assert_probabilities if op == "softmax" else assert_logs
    n = 0
    for case_id, arr, axis in cases(dtype):
        result = _run(op, backend, arr, axis)
        assert result.shape == arr.shape and result.dtype == arr.dtype, case_id
        extra = (arr, axis) if op == "log_softmax" else ()
        checker(result, getattr(oracle, op)(arr, axis), dtype, f"{backend} {op} {case_id}", *extra)
        n += 1
    assert n > 400  # the generator did yield its cases


@pytest.mark.parametrize("dtype", DTYPES)
def test_logsumexp_matches_oracle(backend, dtype):
    for case_id, arr, axis in cases(dtype):
        result = _run("logsumexp", backend, arr, axis)
        ref = oracle.logsumexp(arr, axis)
        assert result.shape == ref.shape and result.dtype == arr.dtype, case_id
        assert_logs(result, ref, dtype, f"{backend} logsumexp {case_id}", arr, axis, reduced=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [2, 10, 31])
def test_short_rows_with_tied_or_nearly_tied_maxima(backend, dtype, k):
    """Short rows (the blocked paths) whose max occurs twice, or stands beside a value whose
    exp(x - m) rounds to 1, the other terms far below: the sum without the max's own 1 is
    then about 1, not tiny, and the kernels that count the 1s apart must not lose one."""
    rng = np.random.default_rng(k)
    n = 64
    x = rng.standard_normal((n, k)) - 40.0
    top = rng.uniform(-1e-3, 1e-3, n)
    x[:, 0] = top
    x[0::3, k - 1] = top[0::3]  # a tie
    x[1::3, k - 1] = np.nextafter(top[1::3], -np.inf)  # exp(x - m) rounds to 1
    x = x.astype(dtype)
    assert_logs(fastsm.logsumexp(x, backend=backend), oracle.logsumexp(x), dtype, f"lse k={k}",
                x, reduced=True)
    assert_logs(fastsm.log_softmax(x, backend=backend), oracle.log_softmax(x), dtype,
                f"logp k={k}", x)
    target = np.zeros(n, np.int64)
    loss, grad = fastsm.cross_entropy_with_grad(x, target, reduction="none", backend=backend)
    assert_cross_entropy(loss, grad, x, target, {"reduction": "none"}, dtype, f"ce k={k}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1000, 32000, 200_000])
def test_long_rows_accumulate_accurately(backend, dtype, k):
    """float32 sums over 200k classes must stay within 3e-6 (float64: 5e-15)."""
    x = values((3, k), "normal", dtype, seed=k)
    assert_probabilities(fastsm.softmax(x, backend=backend), oracle.softmax(x), dtype,
                         f"{backend} softmax k={k}")
    assert_logs(fastsm.log_softmax(x, backend=backend), oracle.log_softmax(x), dtype,
                f"{backend} log_softmax k={k}", x)
    assert_logs(fastsm.logsumexp(x, backend=backend), oracle.logsumexp(x), dtype,
                f"{backend} logsumexp k={k}", x, reduced=True)


@pytest.mark.parametrize("k", [1602, 4000, 16562, 40000])
def test_long_rows_of_integer_logits(backend, k):
    """Few distinct values repeated over a long row (int8 input, computed in float64): the
    same exponentials added thousands of times make a running sum's rounding errors add up
    instead of cancelling.  One vector lane sum over a whole row (c's first AVX-512 float64
    exp-sum, before it summed in chunks) gave softmax 1.0e-14 at k = 16562 against the
    5.4e-15 bar; the fuzz tests found it with int8 input and axis=(0, 1, 2)."""
    x = (np.random.default_rng(k).standard_normal((4, k)) * 3).astype(np.int8).astype(np.float64)
    assert_probabilities(fastsm.softmax(x, backend=backend), oracle.softmax(x), np.float64,
                         f"{backend} softmax k={k}")
    assert_logs(fastsm.log_softmax(x, backend=backend), oracle.log_softmax(x), np.float64,
                f"{backend} log_softmax k={k}", x)
    assert_logs(fastsm.logsumexp(x, backend=backend), oracle.logsumexp(x), np.float64,
                f"{backend} logsumexp k={k}", x, reduced=True)


@pytest.mark.parametrize("k", [1, 3, 10, 17, 64, 1000])
def test_many_short_rows(backend, k):
    """Short rows take the row-blocked paths in compiled backends; check them at scale
    (k = 1000, long rows over many blocks, on fewer rows: the oracle is long double)."""
    for dtype in DTYPES:
        x = values((2000 if k < 1000 else 300, k), "masked", dtype, seed=k)
        assert_probabilities(fastsm.softmax(x, backend=backend), oracle.softmax(x), dtype, f"k={k}")
        assert_logs(fastsm.log_softmax(x, backend=backend), oracle.log_softmax(x), dtype, f"k={k}", x)
        assert_logs(fastsm.logsumexp(x, backend=backend), oracle.logsumexp(x), dtype, f"k={k}", x,
                    reduced=True)


def test_special_row_rules(backend):
    x = np.array([[-np.inf, -np.inf], [np.nan, 1.0], [np.inf, 1.0], [1e4, -np.inf], [-1e30, 0.0]])
    p = fastsm.softmax(x, backend=backend)
    assert np.isnan(p[:3]).all()
    np.testing.assert_array_equal(p[3:], [[1.0, 0.0], [0.0, 1.0]])
    lp = fastsm.log_softmax(x, backend=backend)
    assert np.isnan(lp[:3]).all()
    np.testing.assert_array_equal(lp[3], [0.0, -np.inf])
    np.testing.assert_array_equal(lp[4], [-1e30, 0.0])
    lse = fastsm.logsumexp(x, backend=backend)
    assert lse[0] == -np.inf and np.isnan(lse[1]) and lse[2] == np.inf and lse[3] == 1e4
    assert fastsm.logsumexp(np.array([np.nan, np.inf]), backend=backend) != np.inf


def test_tutorial_example(backend):
    p = fastsm.softmax(np.array([2.0, 1.0, 0.1]), backend=backend)
    np.testing.assert_allclose(p, [0.65900114, 0.24243297, 0.09856589], rtol=1e-7)
    # the tutorial's exp(x)/sum(exp(x)) overflows here; fastsm does not
    big = fastsm.softmax(np.array([1000.0, 999.0], dtype=np.float32), backend=backend)
    np.testing.assert_allclose(big, [0.7310586, 0.26894143], rtol=1e-6)


@pytest.mark.parametrize("shape, axis", [((600, 200), 0), ((3, 300, 100), 1), ((2, 130, 70), -2)])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_non_last_axis_tiled_copy(backend, shape, axis, dtype):
    """Big enough for the front's tiled transpose (_contiguous_rows); k not a tile multiple."""
    x = values(shape, "normal", dtype, seed=7)
    compute = np.float32 if dtype == np.float16 else dtype
    for op, check in (("softmax", assert_probabilities), ("log_softmax", assert_logs),
                      ("logsumexp", assert_logs)):
        result = _run(op, backend, x, axis)
        assert result.dtype == dtype
        extra = {"softmax": (), "log_softmax": (x, axis), "logsumexp": (x, axis, True)}[op]
        check(result, getattr(oracle, op)(x.astype(compute), axis), dtype, f"{backend} {op} {shape}",
              *extra)


@pytest.mark.parametrize("dtype", DTYPES)
def test_results_far_below_one_keep_their_digits(backend, dtype):
    """[0, -t]: log-sum-exp = log1p(exp(-t)), the top log-probability = -log1p(exp(-t)), the
    cross-entropy of the confident right answer the same: values down to 1e-304 (float64;
    float32 to its subnormals) within 4 ulp, where log(1 + tiny) rounds them to 0."""
    top = 700 if dtype == np.float64 else 100
    x = np.array([[0.0, -t] for t in range(10, top + 1, 5)], dtype)
    assert_logs(fastsm.logsumexp(x, backend=backend), oracle.logsumexp(x), dtype, "lse", x,
                reduced=True)
    assert_logs(fastsm.log_softmax(x, backend=backend), oracle.log_softmax(x), dtype, "logp", x)
    target = np.zeros(len(x), np.int64)
    loss, grad = fastsm.cross_entropy_with_grad(x, target, reduction="none", backend=backend)
    assert_cross_entropy(loss, grad, x, target, {"reduction": "none"}, dtype, "ce")
    soft = np.tile(np.array([1.0, 0.0], dtype), (len(x), 1))
    loss = fastsm.cross_entropy(x, soft, reduction="none", backend=backend)
    assert_cross_entropy(loss, None, x, soft, {"reduction": "none"}, dtype, "ce soft")
    # scipy's gh-18295, exactly: log1p(exp(-40)) rounded to float64
    if dtype == np.float64:
        assert fastsm.logsumexp(np.array([0.0, -40.0]), backend=backend) == 4.248354255291589e-18


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [3, 10, 31, 40, 3000])
def test_confident_rows_take_the_careful_path(backend, dtype, k):
    """Every row's top logit 35 above the rest: every row's sum is below 2, so every row
    sums again without its max (short rows blocked, long rows over several chunks)."""
    rng = np.random.default_rng(k)
    x = rng.standard_normal((300, k)).astype(dtype)
    x[np.arange(300), rng.integers(0, k, 300)] = 35.0 + np.log(k)
    x -= np.asarray(35.0 + np.log(k), dtype)  # results near 0: relative accuracy shows
    assert_logs(fastsm.logsumexp(x, backend=backend), oracle.logsumexp(x), dtype, f"lse k={k}",
                x, reduced=True)
    assert_logs(fastsm.log_softmax(x, backend=backend), oracle.log_softmax(x), dtype,
                f"logp k={k}", x)
    target = np.argmax(x, axis=1)
    for options in ({"reduction": "none"}, {"reduction": "none", "label_smoothing": 0.1},
                    {"reduction": "mean"}):
        loss, grad = fastsm.cross_entropy_with_grad(x, target, backend=backend, **options)
        assert_cross_entropy(loss, grad, x, target, options, dtype, f"ce k={k} {options}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1000, 32000, 200_000])
def test_long_rows_cross_entropy(backend, dtype, k):
    """The loss's own sums (sum q_c (x_c - m) for soft targets and label smoothing) run in
    chunks: 4 ulp holds at 200k classes."""
    rng = np.random.default_rng(k)
    x = (rng.standard_normal((3, k)) * 2).astype(dtype)
    t = rng.random((3, k))
    soft = (t / t.sum(1, keepdims=True)).astype(dtype)
    index = rng.integers(0, k, 3)
    for target, options in ((soft, {"reduction": "none"}),
                            (index, {"reduction": "none", "label_smoothing": 0.2})):
        loss = fastsm.cross_entropy(x, target, backend=backend, **options)
        assert_cross_entropy(loss, None, x, target, options, dtype, f"k={k} {options}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [9, 128, 512])
def test_softmax_of_rows_far_below_the_block_max(backend, dtype, k):
    """Rows whose maxima lie up to 23.9 below the array's largest value, with entries
    spread over the whole allowed range: the numpy backend shifts such a block by that one
    value (its _SHIFT_RANGE path), and the results must still meet the bar."""
    rng = np.random.default_rng(k)
    n = 300
    x = -rng.uniform(0.0, 20.0, (n, 1)) - rng.uniform(0.0, 3.9, (n, k))  # row maxima 0..-20
    x[0, 0] = 0.0
    x = x.astype(dtype)
    assert float(x.max()) - float(x.min()) < 24.0
    assert_probabilities(fastsm.softmax(x, backend=backend), oracle.softmax(x), dtype,
                         f"{backend} k={k}")


@pytest.mark.parametrize("r", [1, 2, 3, 5, 7, 16, 17, 600, 1001])
def test_numpy_column_sums_by_halving(r):
    """The numpy backend's float64 sums down a column (a non-last axis): pairwise by
    halving, every row counted once, within a few ulp of the exact sum."""
    import math

    from fastsm.kernels import numpy_kernels

    rng = np.random.default_rng(r)
    e = rng.random((2, r, 19)) * rng.choice([1e-3, 1.0, 1e3], (2, r, 1))
    got = numpy_kernels._halving_sum(e)
    assert got.shape == (2, 1, 19)
    for i in range(2):
        for j in range(19):
            exact = math.fsum(e[i, :, j])
            assert abs(got[i, 0, j] - exact) <= 4 * np.finfo(np.float64).eps * exact, (r, i, j)


@pytest.mark.skipif("c" not in fastsm.backends(), reason="the c backend was not built")
@pytest.mark.parametrize("k", [4, 10, 20, 21, 31])
def test_float32_rows_get_the_same_bits_in_lanes_as_alone(k):
    """The c backend takes short float32 rows 16 at a time across vector lanes (gathers,
    its own vector log) and the rest one at a time; a row's result must not depend on
    which: 48 rows at once against 15 at a time (all one by one)."""
    rng = np.random.default_rng(k)
    x = (rng.standard_normal((48, k)) * rng.uniform(0.1, 8.0, (48, 1))).astype(np.float32)
    x[::5, 0] += 30.0  # confident rows: the near-zero log1p path
    x[7, 1] = np.inf
    x[9, 2] = np.nan
    target = rng.integers(0, k, 48)
    calls = {
        "softmax": lambda a, t: fastsm.softmax(a, backend="c"),
        "log_softmax": lambda a, t: fastsm.log_softmax(a, backend="c"),
        "logsumexp": lambda a, t: fastsm.logsumexp(a, backend="c"),
        "ce_with_grad": lambda a, t: np.concatenate(
            [g.ravel() for g in fastsm.cross_entropy_with_grad(a, t, reduction="none", backend="c")]
        ),
    }
    for op, call in calls.items():
        together = call(x, target)
        alone = [call(x[i:i + 15], target[i:i + 15]) for i in range(0, 48, 15)]
        if op == "ce_with_grad":  # loss then grad, per call
            alone_loss = np.concatenate([a[: len(target[i:i + 15])] for a, i in zip(alone, range(0, 48, 15))])
            alone_grad = np.concatenate([a[len(target[i:i + 15]):] for a, i in zip(alone, range(0, 48, 15))])
            alone = np.concatenate([alone_loss, alone_grad])
        else:
            alone = np.concatenate(alone)
        np.testing.assert_array_equal(together, alone, err_msg=f"{op} k={k}")
