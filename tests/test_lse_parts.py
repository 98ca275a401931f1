"""The kernels' log-sum-exp in parts (``lse_parts``, ``from_lse_parts``; fastsm.dask's
per-chunk kernels) on every backend, against the oracle over the shared array generator."""

import numpy as np
import pytest

import fastsm
from fastsm import _api

from . import oracle
from .arrays import cases, values
from .checks import assert_logs, assert_probabilities

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_lse_parts_and_back_match_oracle(backend, dtype):
    n = 0
    for case_id, arr, axis in cases(dtype):
        before = arr.copy()
        m, L = _api.lse_parts(arr, axis, backend=backend)
        np.testing.assert_array_equal(arr, before, err_msg="input was modified")
        ref = oracle.logsumexp(arr, axis)
        assert m.shape == L.shape == np.expand_dims(ref, axis).shape and m.dtype == L.dtype == np.float64, case_id
        with np.errstate(invalid="ignore"):
            lse = np.where(np.isfinite(m), m + L, L)
            # m is the slice's max wherever the slice holds no NaN (with NaN, L is NaN)
            clean = ~np.isnan(arr).any(axis=axis, keepdims=True)
            if arr.size:
                top = np.max(arr, axis=axis, keepdims=True) if arr.shape[axis] else -np.inf
                np.testing.assert_array_equal(np.where(clean, m, 0), np.where(clean, top, 0),
                                              err_msg=case_id)
        assert np.isnan(L[~clean]).all(), case_id
        assert_logs(np.squeeze(lse, axis), ref, dtype, f"{backend} lse_parts {case_id}", arr, axis, reduced=True)
        if arr.dtype == np.float64:
            # L alone keeps its digits below 1 (a confident slice's tiny L)
            fine = np.isfinite(m) & (np.abs(L) < 1e-3)
            if fine.any():
                with np.errstate(invalid="ignore"):  # inf - inf in slices not compared
                    exact = oracle.logsumexp(arr - m, axis)[np.squeeze(fine, axis)]
                np.testing.assert_allclose(L[fine], exact.astype(np.float64), rtol=1e-14,
                                           atol=1e-300, err_msg=case_id)
        for log, checker in ((False, assert_probabilities), (True, assert_logs)):
            got = _api.from_lse_parts(arr, m, L, axis, log=log, backend=backend)
            assert got.shape == arr.shape and got.dtype == arr.dtype, case_id
            want = (oracle.log_softmax if log else oracle.softmax)(arr, axis)
            extra = (arr, axis) if log else ()
            checker(got, want, dtype, f"{backend} from_lse_parts log={log} {case_id}", *extra)
        n += 1
    assert n > 400


def test_parts_of_pieces_combine_to_the_whole(backend):
    """A row in three pieces: the pieces' parts combined give the whole row's log-sum-exp,
    and from_lse_parts of one piece with the whole row's parts is that piece of softmax."""
    x = values((40, 300), "confident", np.float64, seed=3)
    pieces = np.split(x, [100, 250], axis=1)
    parts = [_api.lse_parts(p, backend=backend) for p in pieces]
    ms = np.concatenate([p[0] for p in parts], axis=1)
    Ls = np.concatenate([p[1] for p in parts], axis=1)
    big = ms.max(axis=1, keepdims=True)
    L = np.log(np.exp(ms - big + Ls).sum(axis=1, keepdims=True))
    assert_logs((big + L)[:, 0], oracle.logsumexp(x), np.float64, "combined", x, reduced=True)
    got = _api.from_lse_parts(pieces[1], big, L, backend=backend)
    assert_probabilities(got, oracle.softmax(x)[:, 100:250], np.float64, "piece")


def test_bad_parts_are_named():
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"m has shape \(2, 1\); expected \(3, 1\)"):
        _api.from_lse_parts(x, np.zeros((2, 1)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="0-d"):
        _api.lse_parts(np.float64(1.0))
    with pytest.raises(TypeError, match="axis"):
        _api.lse_parts(x, axis=1.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_and_near_zero_rows_among_many_blocks(backend, dtype):
    """Rows of +-inf / NaN maxima and rows of s < 2 scattered over a call of many row blocks
    (600 x 1000: the numpy backend keeps such rows for one pass after its blocks), through
    logsumexp and lse_parts, against the oracle."""
    x = values((600, 1000), "normal", dtype, seed=11)
    x[::41] = -np.inf                     # all -inf: -inf
    x[5::53, 7] = np.inf                  # +inf max
    x[9::59, 3] = np.nan                  # NaN
    x[13::61] -= 60.0                     # one clear max: s - 1 ~ 1e-24, L far below 1
    x[13::61, 100] = 0.0
    x[17::67, 8] = np.inf                 # +inf and -inf together: inf
    x[17::67, 9] = -np.inf
    ref = oracle.logsumexp(x)
    lse = fastsm.logsumexp(x, backend=backend)
    assert_logs(lse, ref, dtype, f"{backend} logsumexp", x, reduced=True)
    m, L = _api.lse_parts(x, -1, backend=backend)
    with np.errstate(invalid="ignore"):
        parts = np.where(np.isfinite(m), m + L, L)[:, 0]
    assert_logs(parts, ref, dtype, f"{backend} lse_parts", x, reduced=True)
