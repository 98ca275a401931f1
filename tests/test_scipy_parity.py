"""fastsm as a drop-in for scipy.special: scipy's own test cases (tests/scipy_cases.py),
on every backend, with scipy's tolerances; and fastsm next to scipy where scipy is installed."""

import math

import numpy as np
import pytest

import fastsm

from . import scipy_cases as sc


def _close(actual, expected, rtol, dtype, what):
    """scipy's xp_assert_close / xp_assert_equal: dtype, shape, then values."""
    actual_arr = np.asarray(actual)
    expected = np.asarray(expected, dtype=dtype)
    assert actual_arr.dtype == np.dtype(dtype), f"{what}: dtype {actual_arr.dtype}, expected {dtype}"
    assert actual_arr.shape == expected.shape, f"{what}: shape {actual_arr.shape} != {expected.shape}"
    if rtol == "equal":
        np.testing.assert_array_equal(actual_arr, expected, err_msg=what)
    else:
        if rtol is None:
            rtol = 4 * np.finfo(dtype).eps ** 0.5
        np.testing.assert_allclose(actual_arr, expected, rtol=rtol, atol=0, err_msg=what)


@pytest.mark.parametrize("case", sc.LOGSUMEXP, ids=[c[0] for c in sc.LOGSUMEXP])
def test_logsumexp_cases(backend, case):
    name, a, kwargs, expected, rtol, dtype = case
    before = np.array(a, copy=True)
    b_before = np.array(kwargs["b"], copy=True) if "b" in kwargs else None
    result = fastsm.logsumexp(a, backend=backend, **kwargs)
    _close(result, expected, rtol, dtype, f"{backend} {name}")
    np.testing.assert_array_equal(a, before)  # scipy's test_no_writeback, for every case
    if b_before is not None:
        np.testing.assert_array_equal(kwargs["b"], b_before)


@pytest.mark.parametrize("case", sc.LOGSUMEXP_OF_LOGS, ids=[c[0] for c in sc.LOGSUMEXP_OF_LOGS])
def test_logsumexp_of_logs_cases(backend, case):
    name, a, kwargs, expected = case
    result = fastsm.logsumexp(a, backend=backend, **kwargs)
    _close(np.exp(result), expected, None, "float64", f"{backend} {name}")


@pytest.mark.parametrize("case", sc.LOGSUMEXP_SIGN, ids=[c[0] for c in sc.LOGSUMEXP_SIGN])
def test_logsumexp_sign_cases(backend, case):
    name, a, kwargs, expected, sign = case
    value, got_sign = fastsm.logsumexp(a, backend=backend, return_sign=True, **kwargs)
    if math.isfinite(expected):
        _close(value, expected, None, "float64", f"{backend} {name}")
    else:
        _close(value, expected, "equal", "float64", f"{backend} {name}")
    _close(got_sign, sign, "equal", "float64", f"{backend} {name} sign")
    if sign > 0:  # scipy's gh-22903: the same value without return_sign
        assert fastsm.logsumexp(a, backend=backend, **kwargs) == value


def test_logsumexp_sign_shapes(backend):
    a = np.ones((1, 2, 3, 4))
    for axis, shape in ((2, (1, 2, 4)), ((1, 3), (1, 3))):
        r, s = fastsm.logsumexp(a, axis=axis, b=np.ones_like(a), return_sign=True,
                                backend=backend)
        assert r.shape == s.shape == shape


@pytest.mark.parametrize("dtype_b", sc.REAL_DTYPES)
@pytest.mark.parametrize("dtype_a", sc.REAL_DTYPES)
def test_logsumexp_dtypes_ab(backend, dtype_a, dtype_b):
    a = np.array([2, 1], dtype=dtype_a)
    b = np.array([1, -1], dtype=dtype_b)
    dtype = sc.ab_result_dtype(dtype_a, dtype_b)
    _close(fastsm.logsumexp(a, b=b, backend=backend), sc.AB_VALUE, None, dtype,
           f"{backend} {dtype_a}/{dtype_b}")


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_complex_input_is_a_type_error(backend, dtype):
    x = np.array([1 + 1j, 2 - 1j], dtype=dtype)
    for fn in (fastsm.logsumexp, fastsm.softmax, fastsm.log_softmax):
        with pytest.raises(TypeError, match="complex"):
            fn(x, backend=backend)
    with pytest.raises(TypeError, match="complex"):
        fastsm.logsumexp(np.ones(2), b=x, backend=backend)


@pytest.mark.parametrize("case", sc.SOFTMAX, ids=[c[0] for c in sc.SOFTMAX])
def test_softmax_cases(backend, case):
    name, x, kwargs, expected, rtol = case
    _close(fastsm.softmax(x, backend=backend, **kwargs), expected, rtol, "float64",
           f"{backend} {name}")


@pytest.mark.parametrize("case", sc.LOG_SOFTMAX, ids=[c[0] for c in sc.LOG_SOFTMAX])
def test_log_softmax_cases(backend, case):
    name, x, kwargs, expected, rtol = case
    _close(fastsm.log_softmax(x, backend=backend, **kwargs), expected, rtol, "float64",
           f"{backend} {name}")


def test_zero_d_results_are_numpy_scalars(backend):
    """As np.sum and scipy: a 0-d result is a NumPy scalar, for every function."""
    for result in (fastsm.logsumexp(np.arange(3.0), backend=backend),
                   fastsm.logsumexp(np.ones((2, 2)), axis=None, backend=backend),
                   fastsm.softmax(np.float32(3.0), backend=backend),
                   fastsm.log_softmax(2.0, backend=backend),
                   fastsm.cross_entropy(np.ones((2, 3)), np.array([0, 1]), backend=backend)):
        assert isinstance(result, np.generic), type(result)


@pytest.mark.parametrize("axis, message", [((0, 0), "twice"), ((0, 5), "out of bounds"),
                                           (1.5, "expected an integer"), ([0], "expected an integer")])
def test_bad_axes_name_the_problem(backend, axis, message):
    with pytest.raises((ValueError, TypeError, np.exceptions.AxisError), match=message):
        fastsm.logsumexp(np.ones((2, 3)), axis=axis, backend=backend)


def test_agrees_with_scipy_where_installed(backend):
    special = pytest.importorskip("scipy.special")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 5)) * 4
    b = rng.standard_normal((3, 4, 5))
    for axis in (None, 0, (0, 2), (2, 1), -1, ()):
        np.testing.assert_allclose(fastsm.softmax(x, axis, backend=backend),
                                   special.softmax(x, axis), rtol=1e-13, atol=1e-300)
        # atol: scipy's log_softmax rounds log(1 + t) near 0, so it differs there by ~eps
        np.testing.assert_allclose(fastsm.log_softmax(x, axis, backend=backend),
                                   special.log_softmax(x, axis), rtol=1e-13, atol=4e-16)
        for keepdims in (False, True):
            ours = fastsm.logsumexp(x, axis, b=b, keepdims=keepdims, return_sign=True,
                                    backend=backend)
            theirs = special.logsumexp(x, axis, b=b, keepdims=keepdims, return_sign=True)
            np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-12)
            np.testing.assert_array_equal(ours[1], theirs[1])
