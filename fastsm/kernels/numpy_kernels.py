"""NumPy backend: the portable baseline, vectorised NumPy only.

Design
- Rows are processed in blocks of about ``_BLOCK_ELEMS`` elements so every temporary is one
  reusable block-sized scratch buffer (cache-resident), never a second full-size array.
- softmax works in place in ``out``: max, subtract, exp, sum, scale.  float32 sums use
  NumPy's pairwise summation along the contiguous row (1.3e-6 max relative error at 200k
  classes, under the 3e-6 bar), so no float64 copy of the block is needed.
- Scaling multiplies by the reciprocal of the row sum: one division per row instead of per
  element; the extra rounding is half an ulp.
- ``nthreads`` is accepted for the common contract and ignored: NumPy's ufuncs are serial.
"""

from __future__ import annotations

import numpy as np

NAME = "numpy"
MIN_PARALLEL = None  # serial only: the front never asks for threads
_BLOCK_ELEMS = 1 << 17


def _blocks(n: int, k: int):
    step = max(1, _BLOCK_ELEMS // k)
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _row_max(x):
    m = np.max(x, axis=1, keepdims=True)
    # max() propagates NaN, and a row of +inf/-inf gives inf - inf = NaN below: the NaN rules
    # of the contract fall out of IEEE arithmetic without special cases.
    return m


def softmax(x, out, nthreads=1):
    n, k = x.shape
    with np.errstate(invalid="ignore", over="ignore"):
        for rows in _blocks(n, k):
            xb, ob = x[rows], out[rows]
            m = _row_max(xb)
            np.subtract(xb, m, out=ob)
            np.exp(ob, out=ob)
            s = np.sum(ob, axis=1, keepdims=True)
            np.reciprocal(s, out=s)
            np.multiply(ob, s, out=ob)


def _shifted_log_sum(xb, scratch):
    """(m, log(sum exp(x - m))) per row of block ``xb``, using ``scratch`` for exp."""
    m = _row_max(xb)
    z = scratch[: xb.shape[0]]
    np.subtract(xb, m, out=z)
    np.exp(z, out=z)
    return m, np.log(np.sum(z, axis=1, keepdims=True))


def log_softmax(x, out, nthreads=1):
    n, k = x.shape
    scratch = np.empty((min(n, max(1, _BLOCK_ELEMS // k)), k), x.dtype)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for rows in _blocks(n, k):
            xb = x[rows]
            m, logs = _shifted_log_sum(xb, scratch)
            # (x - m) - log s, never x - (m + log s): m + log s rounds away log s when
            # |m| is huge (rows of -1e30)
            ob = out[rows]
            np.subtract(xb, m, out=ob)
            np.subtract(ob, logs, out=ob)


def logsumexp(x, out, nthreads=1):
    n, k = x.shape
    scratch = np.empty((min(n, max(1, _BLOCK_ELEMS // k)), k), x.dtype)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for rows in _blocks(n, k):
            xb = x[rows]
            m = _row_max(xb)
            # A row whose max is +-inf is shifted by 0 instead: all -inf then gives
            # log(0) = -inf and +inf gives +inf (NaN still wins), as scipy does.
            m[~np.isfinite(m)] = 0
            z = scratch[: xb.shape[0]]
            np.subtract(xb, m, out=z)
            np.exp(z, out=z)
            out[rows] = (m + np.log(np.sum(z, axis=1, keepdims=True)))[:, 0]


def _cross_entropy(x, q_of_block, scale, loss, grad):
    """Shared driver: ``q_of_block(rows) -> (q, Q)`` gives the target weights of a block."""
    n, k = x.shape
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for rows in _blocks(n, k):
            xb = x[rows]
            q, big_q = q_of_block(rows)
            m = _row_max(xb)
            z = xb - m                                  # x - m, block-sized temporary
            e = np.exp(z, out=grad[rows] if grad is not None else None)
            s = np.sum(e, axis=1, keepdims=True)
            logs = np.log(s)
            # sum_c q_c (lse - x_c) = Q log s - sum_c q_c (x_c - m); q_c == 0 terms are 0.
            qz = np.multiply(q, z, dtype=np.float64)
            qz[q == 0] = 0.0
            loss[rows] = big_q[:, 0] * logs[:, 0] - qz.sum(axis=1)
            if grad is not None:
                gb = grad[rows]
                np.multiply(gb, (big_q * scale / s).astype(x.dtype), out=gb)
                np.subtract(gb, (q * scale).astype(x.dtype), out=gb)


def ce_index(x, target, weight, ignore_index, smoothing, scale, loss, grad, nthreads=1):
    n, k = x.shape
    eps = float(smoothing)
    w_sum = float(weight.sum())

    def q_of_block(rows):
        t = target[rows]
        keep = t != ignore_index
        tk = np.where(keep, t, 0)
        wy = np.where(keep, weight[tk], 0.0)
        q = np.zeros((t.shape[0], k), np.float64)
        if eps:
            q[keep] = (eps / k) * weight
        q[np.arange(t.shape[0]), tk] += (1.0 - eps) * wy
        big_q = np.where(keep, (1.0 - eps) * wy + (eps / k) * w_sum, 0.0)[:, None]
        return q, big_q

    _cross_entropy(x, q_of_block, scale, loss, grad)
    ignored = target == ignore_index
    if ignored.any():  # exp of a NaN row times q = 0 would leave NaN where 0 is owed
        loss[ignored] = 0.0
        if grad is not None:
            grad[ignored] = 0


def ce_soft(x, target, weight, smoothing, scale, loss, grad, nthreads=1):
    n, k = x.shape
    eps = float(smoothing)

    def q_of_block(rows):
        q = target[rows].astype(np.float64)
        if eps:
            q *= 1.0 - eps
            q += eps / k
        q *= weight
        return q, q.sum(axis=1, keepdims=True)

    _cross_entropy(x, q_of_block, scale, loss, grad)


def info() -> dict:
    return {"numpy": np.__version__, "threads": "1 (NumPy ufuncs are serial)",
            "exp": "NumPy's own (SIMD-dispatched) exp"}
