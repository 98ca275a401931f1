"""NumPy backend: the portable baseline, vectorised NumPy only.

Design
- Rows are processed in blocks of about ``_BLOCK_ELEMS`` elements so every temporary is one
  reusable block-sized scratch buffer (cache-resident), never a second full-size array.
- softmax works in place in ``out``: max, subtract, exp, sum, scale.  float32 row sums use
  NumPy's pairwise summation in float32 (1.3e-6 max relative error at 200k classes):
  summing in float64 (``dtype=float64``) cost 20-40% of a 4096x1000 float32 call, and
  where the float32 sum is too coarse, near zero, the careful sum below runs in float64,
  so the backends agree there (``logsumexp([0, -10])`` float32 had 4e-4 relative error).
- log-sum-exp, log_softmax and the cross-entropy loss take ``log1p`` of the sum without the
  maximal element's 1 wherever the full sum s is below 2 (``_log_sum``): otherwise a
  result far below 1 loses its digits against that 1 (``logsumexp([0, -40])`` was 0).
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


def _log_sum(xb, m, e, s):
    """log(s) per row, s = sum_c e[r, c] with e = exp(x - m) (the max's own 1 included);
    on rows where s < 2, log1p of the sum without that 1, in float64, where the small
    terms it swamped keep their digits.  Few such rows: gathered; many (short confident
    rows): the whole block, masked, which costs less than gathering half of it."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(s)
        if not (s < 2.0).any():
            return logs
        # 1 <= s < 2: a finite max (its own term is 1) and no NaN in the row
        rows = np.flatnonzero((s[:, 0] >= 1.0) & (s[:, 0] < 2.0))
        if 4 * rows.size > xb.shape[0]:
            at_max = xb == m
            rest = np.sum(e, axis=1, where=~at_max, dtype=np.float64)
            ties = np.count_nonzero(at_max, axis=1) - 1.0
            logs[rows, 0] = np.log1p(rest[rows] + ties[rows])
        elif rows.size:
            ec = e[rows].astype(np.float64)
            ec[np.arange(rows.size), np.argmax(xb[rows] == m[rows], axis=1)] = 0.0
            logs[rows, 0] = np.log1p(ec.sum(axis=1))
    return logs


def _shifted_log_sum(xb, scratch):
    """(m, log(sum exp(x - m))) per row of block ``xb``, using ``scratch`` for exp."""
    m = _row_max(xb)
    z = scratch[: xb.shape[0]]
    np.subtract(xb, m, out=z)
    np.exp(z, out=z)
    return m, _log_sum(xb, m, z, np.sum(z, axis=1, keepdims=True))


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
            np.subtract(ob, logs.astype(ob.dtype), out=ob)


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
            s = np.sum(z, axis=1, keepdims=True)
            out[rows] = (m + _log_sum(xb, m, z, s))[:, 0]


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
            logs = _log_sum(xb, m, e, s)
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
