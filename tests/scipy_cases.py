"""scipy's own test cases for logsumexp, softmax and log_softmax, as data.

Every real-input case of TestLogSumExp, TestSoftmax and TestLogSoftmax in scipy 1.17's
``scipy/special/tests/test_logsumexp.py``: the input, the arguments, the value scipy's test
expects (its literal numbers, or the same formula evaluated here with Python's ``math``),
and scipy's tolerance.  scipy's default axis is None; fastsm's is -1, so each case names
the axis it uses.  ``rtol=None`` is scipy's default for ``xp_assert_close``:
4 * sqrt(eps) of the result dtype.  ``equal`` cases are compared exactly (NaN == NaN).

Cases scipy runs on complex input (gh-21610, gh-21709, the complex-sign and complex
infinity cases) have no real counterpart in fastsm, which rejects complex input with a
TypeError; gh-21610's real part (large uniform logits) is kept as ``gh21610-real``.
"""

from __future__ import annotations

import math

import numpy as np

E = math.e


def _log_sum_exp(values, weights=None):
    """log(sum_i w_i exp(v_i)), exactly enough for these cases (values < 700)."""
    weights = [1.0] * len(values) if weights is None else weights
    m = max(values)
    return m + math.log(math.fsum(w * math.exp(v - m) for v, w in zip(values, weights)))


# ------------------------------------------------------------------ logsumexp
_tiny = np.full(1_000_000, 1e-40)
_tiny_b = np.linspace(1, 1000, 100_000)
_sign_ab = [3.06409428, 0.37251854, 3.87471931]
_gh22903_pos = [1.88190708, 2.84174795, -0.85016884]
_gh22903_neg = [1.88190708, 2.84174795, -3.85016884]
_a2 = np.array([[1e10, 1e-10], [-1e10, -np.inf]])
_uniform = np.random.default_rng(324984329582349862).uniform(1, 40, (10, 100))

LOGSUMEXP = [
    # (id, a, kwargs, expected, rtol or "equal", expected dtype)
    ("empty", np.array([]), dict(axis=None), -np.inf, "equal", "float64"),
    ("arange200", np.arange(200.0), dict(axis=None), _log_sum_exp(range(200)), None, "float64"),
    ("large", np.array([1000.0, 1000.0]), dict(axis=None), 1000 + math.log(2), None, "float64"),
    ("int-full", np.full(1000, 10000), dict(axis=None), 10000 + math.log(1000), None, "float64"),
    ("inf", np.array([np.inf]), dict(axis=None), np.inf, "equal", "float64"),
    ("-inf", np.array([-np.inf]), dict(axis=None), -np.inf, "equal", "float64"),
    ("nan", np.array([np.nan]), dict(axis=None), np.nan, "equal", "float64"),
    ("all-inf", np.array([-np.inf, -np.inf]), dict(axis=None), -np.inf, "equal", "float64"),
    ("magnitudes", _a2, dict(axis=-1), np.array([1e10, -1e10]), None, "float64"),
    ("keepdims", _a2, dict(axis=-1, keepdims=True), np.array([[1e10], [-1e10]]), None,
     "float64"),
    ("two-axes", _a2, dict(axis=(-1, -2)), 1e10, None, "float64"),
    ("sign-shape-axis2", np.ones((1, 2, 3, 4)), dict(axis=2, b=np.ones((1, 2, 3, 4))),
     np.full((1, 2, 4), 1 + math.log(3)), None, "float64"),
    ("sign-shape-axes13", np.ones((1, 2, 3, 4)), dict(axis=(1, 3), b=np.ones((1, 2, 3, 4))),
     np.full((1, 3), 1 + math.log(8)), None, "float64"),
    ("b-arange", np.arange(200.0), dict(axis=None, b=np.arange(200.0, 0.0, -1.0)),
     _log_sum_exp(range(200), list(range(200, 0, -1))), None, "float64"),
    ("b-large", np.array([1000, 1000]), dict(axis=None, b=np.array([1.2, 1.2])),
     1000 + math.log(2 * 1.2), None, "float64"),
    ("b-zero", np.array([1, 10000]), dict(axis=None, b=np.array([1, 0])), 1.0, None, "float64"),
    ("b-broadcast", np.zeros((4, 1, 2, 1)), dict(axis=None, b=np.ones((3, 1, 5))),
     math.log(120), None, "float64"),
    ("scalar", np.array(1), dict(), 1.0, None, "float64"),
    ("list", [1, 2, 3], dict(), _log_sum_exp([1, 2, 3]), None, "float64"),
    ("array-like", [1000, 1000], dict(), 1000 + math.log(2), None, "float64"),
    ("dtype-float32", np.array([1000.0, 1000.0], np.float32), dict(),
     1000 + math.log(2), None, "float32"),
    ("dtype-float64", np.array([1000.0, 1000.0]), dict(), 1000 + math.log(2), None, "float64"),
    ("dtype-int32", np.array([1000, 1000], np.int32), dict(), 1000 + math.log(2), None, "float64"),
    ("dtype-int64", np.array([1000, 1000], np.int64), dict(), 1000 + math.log(2), None, "float64"),
    ("gh18295", np.array([0.0, -40.0]), dict(), math.log1p(math.exp(-40.0)), None, "float64"),
    ("gh22601-inf-inf", np.array([np.inf, np.inf]), dict(), np.inf, "equal", "float64"),
    ("gh22601-inf--inf", np.array([np.inf, -np.inf]), dict(), np.inf, "equal", "float64"),
    ("gh22601--inf-inf", np.array([-np.inf, np.inf]), dict(), np.inf, "equal", "float64"),
    ("gh22601--inf--inf", np.array([-np.inf, -np.inf]), dict(), -np.inf, "equal", "float64"),
    ("gh22903-positive", np.array(_sign_ab), dict(b=np.array(_gh22903_pos)),
     _log_sum_exp(_sign_ab, _gh22903_pos), None, "float64"),
    ("gh22903-negative", np.array(_sign_ab), dict(b=np.array(_gh22903_neg)), np.nan, "equal",
     "float64"),
    ("gh21610-real", _uniform, dict(axis=1),
     np.array([_log_sum_exp(list(row)) for row in _uniform]), None, "float64"),
]

# log-sum-exp of logs: scipy compares exp(result) with the plain sum
LOGSUMEXP_OF_LOGS = [
    # (id, a, kwargs, expected exp(result))
    ("tiny-all", np.log(np.stack([_tiny, _tiny])), dict(axis=None), 2e6 * 1e-40),
    ("tiny-axis0", np.log(np.stack([_tiny, _tiny])), dict(axis=0), np.full(1_000_000, 2e-40)),
    ("tiny-axis1", np.log(np.stack([_tiny, _tiny])), dict(axis=1), np.full(2, 1e6 * 1e-40)),
    ("tiny-b-all", np.log(np.stack([_tiny[:100_000]] * 2)),
     dict(axis=None, b=np.stack([_tiny_b, _tiny_b])), 2 * math.fsum(_tiny_b) * 1e-40),
    ("tiny-b-axis0", np.log(np.stack([_tiny[:100_000]] * 2)),
     dict(axis=0, b=np.stack([_tiny_b, _tiny_b])), 2 * _tiny_b * 1e-40),
    ("tiny-b-axis1", np.log(np.stack([_tiny[:100_000]] * 2)),
     dict(axis=1, b=np.stack([_tiny_b, _tiny_b])), np.full(2, math.fsum(_tiny_b) * 1e-40)),
]

# return_sign=True: (id, a, kwargs, expected value, expected sign)
LOGSUMEXP_SIGN = [
    ("sign", np.array([1, 1, 1]), dict(b=np.array([1, -1, -1])), 1.0, -1.0),
    ("sign-zero", np.array([1, 1]), dict(b=np.array([1, -1])), -np.inf, 0.0),
    ("gh22903", np.array(_sign_ab), dict(b=np.array(_gh22903_pos)),
     _log_sum_exp(_sign_ab, _gh22903_pos), 1.0),
    ("gh23548-inf", np.array([np.inf]), dict(), np.inf, 1.0),
    ("gh23548-inf-negative-b", np.array([np.inf]), dict(b=np.array([-1.0])), np.inf, -1.0),
]

# a and b of every pair of real dtypes: log(e^2 - e) in result_type(a, b), integers as float64
REAL_DTYPES = ["float32", "float64", "int32", "int64"]
AB_VALUE = math.log(math.exp(2) - math.exp(1))


def ab_result_dtype(dtype_a, dtype_b):
    dt = np.result_type(dtype_a, dtype_b)
    return np.dtype(np.float64) if dt.kind in "iu" else dt


# ------------------------------------------------------------------ softmax / log_softmax
_ARANGE4_SOFTMAX = [0.03205860328008499, 0.08714431874203256, 0.23688281808991013,
                    0.6439142598879722]  # scipy's mpmath values
_WIDE = np.array([[-25.0, 0.0, 25.0, 50.0], [1.0, 325.0, 749.0, 750.0]])
_WIDE_SOFTMAX = np.array([[2.678636961770877e-33, 1.9287498479371314e-22,
                           1.3887943864771144e-11, 0.999999999986112],
                          [0.0, 1.9444526359919372e-185, 0.2689414213699951,
                           0.7310585786300048]])
_ARANGE4_LOG = [-3.4401896985611953, -2.4401896985611953, -1.4401896985611953,
                -0.44018969856119533]

SOFTMAX = [
    # (id, x, kwargs, expected, rtol)
    ("one-big", np.array([1000.0, 0.0, 0.0, 0.0]), dict(), [1.0, 0.0, 0.0, 0.0], 1e-13),
    ("halves", np.array([1.0, 1.0]), dict(), [0.5, 0.5], 1e-13),
    ("e", np.array([0.0, 1.0]), dict(), [1 / (1 + E), E / (1 + E)], 1e-13),
    ("arange4", np.arange(4.0), dict(), _ARANGE4_SOFTMAX, 1e-13),
    ("translation", np.arange(4.0) + 100, dict(), _ARANGE4_SOFTMAX, 1e-13),
    ("axis-none", np.arange(4.0).reshape(2, 2), dict(axis=None),
     np.reshape(_ARANGE4_SOFTMAX, (2, 2)), 1e-13),
    ("axis0", np.array([[1000.0, 0.0], [1000.0, 0.0]]), dict(axis=0), np.full((2, 2), 0.5), 1e-13),
    ("axis1", np.array([[1000.0, 0.0], [1000.0, 0.0]]), dict(axis=1), [[1.0, 0.0], [1.0, 0.0]],
     1e-13),
    ("wide-axis1", _WIDE, dict(axis=1), _WIDE_SOFTMAX, 1e-13),
    ("wide-transposed-axis0", _WIDE.T, dict(axis=0), _WIDE_SOFTMAX.T, 1e-13),
    ("3d-tuple-axes", _WIDE.reshape(2, 2, 2), dict(axis=(1, 2)), _WIDE_SOFTMAX.reshape(2, 2, 2),
     1e-13),
    ("int", np.array([1000, 0, 0, 0]), dict(), [1.0, 0.0, 0.0, 0.0], 1e-13),
    ("scalar", 1000, dict(), 1.0, 1e-13),
    ("array-like", [1000, 0, 0, 0], dict(), [1.0, 0.0, 0.0, 0.0], 1e-13),
]

LOG_SOFTMAX = [
    ("basic", np.array([1000.0, 1.0]), dict(), [0.0, -999.0], 1e-13),
    ("int", np.array([1000, 1]), dict(), [0.0, -999.0], 1e-13),
    ("scalar", 1.0, dict(), 0.0, 1e-13),
    ("array-like", [1000, 1], dict(), [0.0, -999.0], 1e-13),
    ("translation-0", np.arange(4.0), dict(), _ARANGE4_LOG, 1e-13),
    ("translation-100", np.arange(4.0) + 100, dict(), _ARANGE4_LOG, 1e-13),
    ("axis-none", np.arange(4.0).reshape(2, 2), dict(axis=None), np.reshape(_ARANGE4_LOG, (2, 2)),
     1e-13),
    ("axes-0", np.array([[1000.0, 1.0], [1000.0, 1.0]]), dict(axis=0),
     np.full((2, 2), math.log(0.5)), 1e-13),
    ("axes-1", np.array([[1000.0, 1.0], [1000.0, 1.0]]), dict(axis=1),
     [[0.0, -999.0], [0.0, -999.0]], 1e-13),
    ("2d-axis1", np.arange(8.0).reshape(2, 4), dict(axis=1), [_ARANGE4_LOG] * 2, 1e-13),
    ("2d-axis0", np.arange(8.0).reshape(2, 4).T, dict(axis=0), np.array([_ARANGE4_LOG] * 2).T,
     1e-13),
    ("3d-tuple-axes", np.arange(8.0).reshape(2, 2, 2), dict(axis=(1, 2)),
     np.reshape([_ARANGE4_LOG] * 2, (2, 2, 2)), 1e-13),
]
