"""Every backend against the long-double oracle over the shared array generator."""

import numpy as np
import pytest

import fastsm

from . import oracle
from .arrays import cases, values
from .checks import assert_logs, assert_probabilities

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
        checker(result, getattr(oracle, op)(arr, axis), dtype, f"{backend} {op} {case_id}")
        n += 1
    assert n > 400  # the generator did yield its cases


@pytest.mark.parametrize("dtype", DTYPES)
def test_logsumexp_matches_oracle(backend, dtype):
    for case_id, arr, axis in cases(dtype):
        result = _run("logsumexp", backend, arr, axis)
        ref = oracle.logsumexp(arr, axis)
        assert result.shape == ref.shape and result.dtype == arr.dtype, case_id
        assert_logs(result, ref, dtype, f"{backend} logsumexp {case_id}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1000, 32000, 200_000])
def test_long_rows_accumulate_accurately(backend, dtype, k):
    """float32 sums over 200k classes must stay within 3e-6 (float64: 5e-15)."""
    x = values((3, k), "normal", dtype, seed=k)
    assert_probabilities(fastsm.softmax(x, backend=backend), oracle.softmax(x), dtype,
                         f"{backend} softmax k={k}")
    assert_logs(fastsm.log_softmax(x, backend=backend), oracle.log_softmax(x), dtype,
                f"{backend} log_softmax k={k}")
    assert_logs(fastsm.logsumexp(x, backend=backend), oracle.logsumexp(x), dtype,
                f"{backend} logsumexp k={k}")


@pytest.mark.parametrize("k", [1, 3, 10, 17, 64, 1000])
def test_many_short_rows(backend, k):
    """Short rows take the row-blocked paths in compiled backends; check them at scale."""
    for dtype in DTYPES:
        x = values((2000, k), "masked", dtype, seed=k)
        assert_probabilities(fastsm.softmax(x, backend=backend), oracle.softmax(x), dtype, f"k={k}")
        assert_logs(fastsm.log_softmax(x, backend=backend), oracle.log_softmax(x), dtype, f"k={k}")
        assert_logs(fastsm.logsumexp(x, backend=backend), oracle.logsumexp(x), dtype, f"k={k}")


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
        check(result, getattr(oracle, op)(x.astype(compute), axis), dtype, f"{backend} {op} {shape}")
