"""Comparison helpers: the accuracy bar, applied the same way to every backend."""

from __future__ import annotations

import numpy as np

RTOL = {np.dtype(np.float32): 3e-6, np.dtype(np.float64): 5e-15, np.dtype(np.float16): 1e-3}


def _special_positions_match(actual, ref, what):
    a_nan, r_nan = np.isnan(actual), np.isnan(ref)
    assert np.array_equal(a_nan, r_nan), f"{what}: NaN at {np.argwhere(a_nan != r_nan)[:5].tolist()}"
    a_inf = np.where(np.isinf(actual), np.sign(actual), 0)
    r_inf = np.where(np.isinf(ref), np.sign(ref), 0)
    assert np.array_equal(a_inf, r_inf.astype(a_inf.dtype)), f"{what}: inf mismatch"


def max_rel_error(actual, ref, floor):
    """max |a - r| / max(|r|, floor) over finite reference entries."""
    actual = np.asarray(actual, dtype=np.longdouble)
    ref = np.asarray(ref, dtype=np.longdouble)
    fin = np.isfinite(ref)
    if not fin.any():
        return 0.0
    err = np.abs(actual[fin] - ref[fin]) / np.maximum(np.abs(ref[fin]), floor)
    return float(err.max())


def assert_probabilities(actual, ref, dtype, what):
    """Relative error of probabilities; results below the smallest normal count as exact."""
    _special_positions_match(actual, ref, what)
    dtype = np.dtype(dtype)
    ref_rounded_away = np.abs(ref) < np.finfo(dtype).tiny
    fin = np.isfinite(ref) & ~ref_rounded_away
    err = max_rel_error(np.where(fin, actual, 0), np.where(fin, ref, 0), np.finfo(dtype).tiny)
    tiny_err = np.abs(np.asarray(actual, np.longdouble)[ref_rounded_away] - ref[ref_rounded_away])
    assert err <= RTOL[dtype], f"{what}: max relative error {err:.3g} > {RTOL[dtype]:.0e}"
    assert (tiny_err <= 2 * np.finfo(dtype).tiny).all(), f"{what}: subnormal error"


def assert_logs(actual, ref, dtype, what):
    """log-probabilities / log-sum-exp: error relative to max(1, |ref|)."""
    _special_positions_match(actual, ref, what)
    err = max_rel_error(actual, ref, 1.0)
    dtype = np.dtype(dtype)
    assert err <= RTOL[dtype], f"{what}: max error {err:.3g} > {RTOL[dtype]:.0e} (rel. to max(1,|ref|))"
