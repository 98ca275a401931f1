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
- Short rows (k < 32, blocks of at least 16 rows per class) reduce column by column, in
  float64 for the sums (``_by_columns``): NumPy's axis-1 reductions pay ~100 ns per row.
- Cross-entropy with class-index targets never builds the (rows, k) target weights: a
  gather for the target's term, a matrix-vector product for label smoothing's.
- Measured against the kernels before the log1p work (1 thread, medians of 30
  interleaved calls, ``python -m benchmarks.ab_kernels``,
  benchmarks/results/ab_vs_before_near_zero.txt): every main cell 0.25-1.01x the time;
  logsumexp 4096x1000 0.91-0.95x, 512x32000 0.98-1.01x (1.03-1.10 before the column fill
  and the careful rows' single pass, see _FILL_MAX_K and _lse_rows).
- Scaling multiplies by the reciprocal of the row sum: one division per row instead of per
  element; the extra rounding is half an ulp.
- ``nthreads`` is accepted for the common contract and ignored: NumPy's ufuncs are serial.
"""

from __future__ import annotations

import numpy as np

NAME = "numpy"
MIN_PARALLEL = None  # serial only: the front never asks for threads
_BLOCK_ELEMS = 1 << 17
# Rows shorter than this reduce column by column (one ufunc call per class over all rows
# of the block) instead of along axis 1, whose per-row inner loop dominates short rows:
# 13107x10 float32, per block: max(axis=1) 1410 us, 10 np.maximum over columns 70 us;
# sum(axis=1) 390 us, float64 column sums 135 us.  Blocks of fewer than 16 rows per class
# stay on axis 1: there the ~1 us per ufunc call dominates (64x16: 2-3x slower by columns).
_SHORT_K = 32
# Rows of up to this many classes take their max as the value at argmax: NumPy's argmax
# along axis 1 pays less per row than max does, and the gather more per element.  Whole
# log_softmax / logsumexp, argmax time / max time (medians of 30 interleaved, 1 thread,
# float32 and float64): 32768x128 0.88-0.96, 16384x256 0.95-1.01, 8192x512 0.98-1.03,
# 4096x1000 1.04-1.07 (softmax 1.04-1.06 there: 6% of the 1e81cc1 kernel's speed lost).
_ARGMAX_MAX_K = 256


# The reductions as ufunc methods: np.max / np.sum / x.min() go through Python wrappers
# (numpy/_core/fromnumeric.py, _methods.py) costing ~1-2 us a call here, most of a
# 64x128 call's per-row work.  Same loops, same results (NaN propagates alike).
_MAX, _MIN, _SUM = np.maximum.reduce, np.minimum.reduce, np.add.reduce

# A (rows, 1) column broadcast over a block costs NumPy ~0.3 us a row (its inner loop runs
# row by row at the slow, general stride); filling a block with the column first (a
# broadcast copy, cheap per row) and then a same-shape ufunc runs at full speed.  Measured,
# np.subtract(x, col, out) against copyto + subtract (min of 9x300 calls, 1 thread):
# 131x1000 float32 68 -> 42 us, float64 161 -> 85; 1024x128 64 -> 40, 150 -> 88; 64x128
# 5.2 -> 3.7, 8.6 -> 5.9; but 4x32000 19 -> 40 (few rows: the fill is the cost).  Whole
# kernels against the same module without it (medians of 40 interleaved calls, 1 thread):
# logsumexp 4096x1000 0.89-0.93, log_softmax 0.90-0.94 (one float64 run of four: 1.04);
# 1024x128 both 0.88-0.92.  The fill into a separate block measured slower than the
# broadcast (softmax's final multiply by 1/s: 64x128 1.04-1.07x), so only subtracts
# whose output block is the fill use it, and log_softmax's second one, whose fill is the
# spent exponentials.
_FILL_MAX_K = 4096


def _column_op(ufunc, a, col, out, fill):
    """out = ufunc(a, col) for a (rows, k) block and a (rows, 1) column, through ``fill``
    (a block of out's shape and dtype sharing no memory with ``a``; may be ``out``; None:
    none) for rows up to _FILL_MAX_K."""
    if fill is not None and a.shape[1] <= _FILL_MAX_K:
        np.copyto(fill, col, casting="same_kind")
        return ufunc(a, fill, out=out)
    return ufunc(a, col, out=out)


def _by_columns(a) -> bool:
    n, k = a.shape
    return k < _SHORT_K and n >= 16 * k


def _blocks(n: int, k: int):
    step = max(1, _BLOCK_ELEMS // k)
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _row_max(x):
    """(rows, 1) row maxima.  max() propagates NaN, and a row of +inf/-inf gives inf - inf
    = NaN below: the NaN rules of the contract fall out of IEEE arithmetic without special
    cases.  Short rows go column by column (see _SHORT_K)."""
    n, k = x.shape
    if not _by_columns(x):
        if k <= _ARGMAX_MAX_K:  # the value at argmax: the same max (NaN: the first NaN)
            return x[np.arange(n), x.argmax(axis=1)][:, None]
        return _MAX(x, axis=1, keepdims=True)
    m = x[:, 0].copy()
    for c in range(1, k):
        np.maximum(m, x[:, c], out=m)
    return m[:, None]


def _row_sum(e, dtype=None):
    """(rows, 1) row sums: NumPy's pairwise sum in ``dtype`` (default e's, see the design
    block), or float64 column by column (_by_columns)."""
    k = e.shape[1]
    if not _by_columns(e):
        return _SUM(e, axis=1, keepdims=True, dtype=dtype)
    s = e[:, 0].astype(np.float64)
    for c in range(1, k):
        np.add(s, e[:, c], out=s)
    return s[:, None]


# float32 blocks up to this many elements sum in float64 for the log ops (see _log_sum):
# at this size the NumPy calls, not the cast, are the cost (64x128 float32 log_softmax
# and logsumexp ~0.85x the time); beyond it the float64 sum costs 20-40% of a call.
_F64_SUMS_MAX = 1 << 15


def _sums_dtype(e):
    """The row sums' dtype for the log ops: float64 for small float32 blocks, else e's."""
    return np.float64 if e.dtype == np.float32 and e.size <= _F64_SUMS_MAX else None


# softmax shifts a block by its one largest value where every value lies within
# _SHIFT_RANGE of it (two whole-block reductions instead of a per-row max, whose ~100-200 ns
# per row dominate rows of up to a few hundred classes): no exp then underflows to a
# subnormal, and the argument's rounding, half an ulp of 24 (9.5e-7 float32, 1.8e-15
# float64, relative in exp), stays inside the accuracy bar (3e-6 / 5e-15).  Measured,
# NumPy-baseline time / this (medians, 1 thread): 64x128 float32 1.31 (per-row max: 0.80),
# 512x256 1.48 (1.00), 1000x64 2.04 (0.94); at 4096x1000 float32 the two reductions cost
# more than the per-row max saves (12.95 vs 11.32 ms), hence _SHIFT_MAX_K.
_SHIFT_RANGE = 24.0
_SHIFT_MAX_K = 512


def _softmax_shift(xb):
    """The block's shift: its largest value where the block allows that, else row maxima."""
    k = xb.shape[1]
    if _SHORT_K <= k <= _SHIFT_MAX_K or (k < _SHORT_K and not _by_columns(xb)):
        hi = _MAX(xb, axis=None)
        if hi - _MIN(xb, axis=None) < _SHIFT_RANGE:  # False for NaN and for any infinity
            return hi
    return _row_max(xb)


def softmax(x, out, nthreads=1):
    n, k = x.shape
    in_place = None  # out is x (the front allows exactly that): asked where it matters
    with np.errstate(invalid="ignore", over="ignore"):
        for rows in _blocks(n, k):
            xb, ob = x[rows], out[rows]
            m = _softmax_shift(xb)
            if isinstance(m, np.ndarray):  # row maxima, not the block's one shift
                if in_place is None:
                    in_place = np.may_share_memory(x, out)
                _column_op(np.subtract, xb, m, ob, None if in_place else ob)
            else:
                np.subtract(xb, m, out=ob)
            np.exp(ob, out=ob)
            s = _row_sum(ob)
            np.reciprocal(s, out=s)
            np.multiply(ob, s.astype(ob.dtype, copy=False), out=ob)


def _log_and_final(e, s, out=None):
    """(the log of the row sums s of e = exp(x - m), where that log is final): log(s) and
    s >= 2, or for float32 rows summed in float64 (_sums_dtype) log1p(s - 1) and s - 1 >=
    2^-20.  Both are False for a NaN s; the rest need _log_sum's careful sums."""
    if e.dtype == np.float32 and s.dtype == np.float64:
        t = s - 1.0
        return np.log1p(t, out=out), t >= 2.0 ** -20  # s = 0 (all -inf): log1p(-1) = -inf
    return np.log(s, out=out), s >= 2.0


def _log_sum(e, s):
    """log(s) per row, s = sum_c e[r, c] with e = exp(x - m) (the max's own 1 included);
    on rows where s < 2, log1p of the sum without that 1, in float64, where the small
    terms it swamped keep their digits.

    Every term but the max's is under 1, and a row with s < 2 holds exactly one term of 1
    (a tie, or a term that rounded to 1, makes s >= 2), so the terms under 1 summed are
    the sum without the max's own term.  float32 rows need less: s - 1 from a float64 sum
    holds it to k * 1e-16, enough for a float32 result down to 2^-20.  Callers hold
    np.errstate (log of 0 and of NaN rows).

    float32 rows summed in float64 (``_sums_dtype``) take log1p(s - 1) on every row, so
    only rows with s - 1 under 2^-20 (rare) need more calls: with log(s) and then the
    rows of s < 2 apart, a 64x128 call made ~10 more NumPy calls nearly every time."""
    logs, final = _log_and_final(e, s)
    if final.all():  # one compare for the common case of long rows
        return logs
    rows = np.flatnonzero(~final[:, 0] & (s[:, 0] >= 1.0))  # also: a finite max and no NaN
    if e.dtype == np.float32 and s.dtype == np.float64:  # rows with s - 1 under 2^-20
        er = e[rows]
        logs[rows, 0] = np.log1p(_SUM(er, axis=1, where=er < 1, dtype=np.float64))
        return logs
    many = 4 * rows.size > e.shape[0]  # then the whole block costs less than a gather
    if e.dtype == np.float32:
        if many:
            s64 = _SUM(e, axis=1, dtype=np.float64)[rows]
        else:
            s64 = _SUM(e[rows], axis=1, dtype=np.float64)
        rest = s64 - 1.0
        fine = rest >= 2.0 ** -20
        logs[rows[fine], 0] = np.log1p(rest[fine])
        rows = rows[~fine]
        if not rows.size:
            return logs
    if many:
        rest = _row_sum(e * (e < 1), np.float64)[rows, 0]
    else:
        er = e[rows]
        rest = _SUM(er, axis=1, where=er < 1, dtype=np.float64)
    logs[rows, 0] = np.log1p(rest)
    return logs


def log_softmax(x, out, nthreads=1):
    n, k = x.shape
    in_place = np.may_share_memory(x, out)  # out is x (the front allows exactly that)
    scratch = np.empty((min(n, max(1, _BLOCK_ELEMS // k)), k), x.dtype)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for rows in _blocks(n, k):
            # (x - m) - log s, never x - (m + log s): m + log s rounds away log s when
            # |m| is huge (rows of -1e30).  x - m is made once, in out (each broadcast
            # subtract costs a pass: 6 us of a 64x128 call), and exp reads it from there
            xb, ob = x[rows], out[rows]
            _column_op(np.subtract, xb, _row_max(xb), ob, None if in_place else ob)
            e = np.exp(ob, out=scratch[: ob.shape[0]])
            logs = _log_sum(e, _row_sum(e, _sums_dtype(e))).astype(ob.dtype)
            _column_op(np.subtract, ob, logs, ob, e)  # e is spent: the fill


def _lse_rows(x, lse=None, m=None, L=None):
    """Per row: the logsumexp into ``lse`` (n,), or its parts, the row max into ``m`` and
    L = log sum exp(x - m) into ``L`` ((n,), float64).  A row whose max is +-inf or NaN
    has L = its logsumexp itself (all -inf: log(0) = -inf; +inf: +inf; NaN wins), as
    scipy does, so its logsumexp is always L there.

    Common rows cost 9 NumPy calls a block: max, fill and subtract, exp, sum, log, a compare and
    count for s >= 2 (False for a NaN s, i.e. a row with a NaN or infinite max, and for
    the rows of s < 2 that need the careful log1p), and the result's add.  Blocks with a
    quarter or more of such rows (short rows) run _log_sum in place; otherwise those rows'
    exponentials and maxima are kept for one pass over all of them per call: done per
    block, the careful sums' ~12 calls came into nearly every block (0.5% of 4096x1000
    bench rows have s < 2) and cost logsumexp 9-10% of its time there; gathering the rows
    of x again after the blocks (max, subtract, exp once more) cost ~3% there."""
    n, k = x.shape
    if L is None:
        L = np.empty(n)
    later = []
    scratch = np.empty((min(n, max(1, _BLOCK_ELEMS // k)), k), x.dtype)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for rows in _blocks(n, k):
            xb = x[rows]
            mb = _row_max(xb)
            if m is not None:
                m[rows] = mb[:, 0]
            z = scratch[: xb.shape[0]]
            _column_op(np.subtract, xb, mb, z, z)
            np.exp(z, out=z)
            s = _row_sum(z, _sums_dtype(z))
            Lb = L[rows]
            plain = _log_and_final(z, s[:, 0], out=Lb)[1]
            count = np.count_nonzero(plain)
            if count < plain.size:
                odd = np.flatnonzero(~plain)
                if 4 * odd.size > xb.shape[0] or xb.shape[0] == n:  # or one block: no gather
                    Lb[odd] = _careful_logs(xb, odd, mb[odd], z[odd], s[odd])
                else:  # their lse below is overwritten by the pass after the blocks
                    later.append((rows.start + odd, mb[odd], z[odd]))
            if lse is not None:  # m + L = L where m is infinite or NaN (L is then m or NaN)
                np.add(mb[:, 0], Lb, out=lse[rows])
        if later:
            careful, mr, zr = (np.concatenate(parts) for parts in zip(*later))
            Lr = _careful_logs(x, careful, mr, zr, _row_sum(zr, _sums_dtype(zr)))
            L[careful] = Lr
            if lse is not None:
                lse[careful] = mr[:, 0] + Lr


def _careful_logs(x, rows, m, z, s):
    """L for rows ``rows`` of x whose log s is not final (_log_and_final), given their
    maxima m, exponentials z and sums s: the careful log1p (_log_sum) where the max is
    finite, else the logsumexp itself (a row shifted by an infinite or NaN max: log sum
    exp x, as scipy)."""
    finite = np.isfinite(m[:, 0])
    if finite.all():
        return _log_sum(z, s)[:, 0]
    L = np.empty(rows.size)
    L[~finite] = np.log(np.sum(np.exp(x[rows[~finite]]), axis=1))
    L[finite] = _log_sum(z[finite], s[finite])[:, 0]
    return L


def logsumexp(x, out, nthreads=1):
    _lse_rows(x, lse=out)


def lse_parts(x, m_out, l_out, nthreads=1):
    _lse_rows(x, m=m_out, L=l_out)


def from_lse_parts(x, m, L, out, log, nthreads=1):
    n, k = x.shape
    with np.errstate(invalid="ignore", over="ignore"):
        for rows in _blocks(n, k):
            mb = m[rows, None].astype(x.dtype)
            lb = L[rows, None].astype(x.dtype)
            ob = out[rows]
            np.subtract(x[rows], mb, out=ob)
            np.subtract(ob, lb, out=ob)
            if not log:
                np.exp(ob, out=ob)
            bad = ~np.isfinite(mb[:, 0]) | np.isnan(lb[:, 0])
            if bad.any():
                ob[bad] = np.nan


# ---- one reduced axis that is not last (optional in the contract): x is a C-contiguous
# (a, R, b) array reduced over R.  NumPy reduces that middle axis a row of b at a time, in
# vector steps, so float32 needs no transposed copy: 1000x512 along axis 0, NumPy-baseline
# time / ours (interleaved, 5 runs): softmax 0.86-1.28, log_softmax 0.78-0.95, logsumexp
# 0.77-0.89, where the transposing front measured 0.53-0.61.  float64 sums by halving
# (_halving_sum): a sum straight down a column is sequential (14 ulp of log_softmax at
# 600 rows).  Columns whose plain formula may be wrong, a sum under 2 (a near-zero log term, see
# _log_sum) or a max that is not finite, go through the row kernels on a gathered copy:
# rare, and then every rule of the row kernels holds for them too.
COLS_DTYPES = ("float32", "float64")
_COL_GROUP = 16


def _halving_sum(e):
    """(a, 1, b) sums of float64 e (a, R, b) over R, pairwise by halving: each level adds
    the upper half's rows onto the lower half's in one NumPy call (an odd last row onto
    the first), log2 R levels and O(log R) roundings a column, where a sum straight down
    a column (NumPy's axis reduction) makes R: 14 ulp of log_softmax at 600 rows, over the
    4 ulp bar, which kept float64 on the front's transposed copy (0.52-0.65x the NumPy
    baseline's time at 1000x512 along axis 0)."""
    r = e.shape[1]
    if r == 1:
        return e.copy()
    h = r // 2
    buf = np.add(e[:, :h], e[:, h:2 * h])
    if r % 2:
        buf[:, :1] += e[:, 2 * h:]
    r = h
    while r > 1:
        h = r // 2
        np.add(buf[:, :h], buf[:, h:2 * h], out=buf[:, :h])
        if r % 2:
            buf[:, :1] += buf[:, 2 * h:r]
        r = h
    return buf[:, :1]


def _column_sums(x, e, z=None):
    """(m, s): column max (a, 1, b) and the float64 sum of e = exp(x - m) (written to e;
    x - m kept in ``z`` if given).  float32 columns sum groups of _COL_GROUP rows in
    float32 (at most 15 roundings each) and the group sums in float64.  Measured at
    1000x512 float32: a float64 sum of the whole array (its cast) 392 us, a float32 one 129
    us (its sequential error grows with the column); halving pairwise three times in
    float32 before the float64 sum cost 0.83-0.90x the NumPy baseline's softmax time
    where the groups give 1.01-1.06x, and halving in float64 from the first level (the
    float64 columns' _halving_sum) 0.61-0.77x where the groups gave 0.77-0.96x."""
    m = _MAX(x, axis=1, keepdims=True)
    if z is None:
        np.subtract(x, m, out=e)
        np.exp(e, out=e)
    else:
        np.subtract(x, m, out=z)
        np.exp(z, out=e)
    a, r, b = e.shape
    if e.dtype == np.float64:
        return m, _halving_sum(e)
    if r < 2 * _COL_GROUP:
        return m, np.sum(e, axis=1, keepdims=True, dtype=np.float64)
    whole = r - r % _COL_GROUP
    groups = e[:, :whole].reshape(a, whole // _COL_GROUP, _COL_GROUP, b).sum(axis=2)
    s = np.sum(groups, axis=1, keepdims=True, dtype=np.float64)
    if whole < r:
        s += np.sum(e[:, whole:], axis=1, keepdims=True, dtype=np.float64)
    return m, s


def _odd_columns(m, s):
    """(i, j) of the columns for the row kernels: s < 2 or NaN, or a non-finite max."""
    return np.nonzero(~(s[:, 0] >= 2.0) | ~np.isfinite(m[:, 0]))


def _through_rows(kernel, x, i, j, width):
    """``kernel`` (a row kernel) on columns x[i, :, j] gathered as rows; (len(i), width)."""
    rows = np.ascontiguousarray(x[i, :, j])
    res = np.empty((rows.shape[0], width) if width else rows.shape[0], x.dtype)
    kernel(rows, res)
    return res


def softmax_cols(x, out, nthreads=1):
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        _, s = _column_sums(x, out)  # odd columns need nothing: IEEE gives NaN rows NaN
        np.multiply(out, (1.0 / s).astype(x.dtype), out=out)


def log_softmax_cols(x, out, nthreads=1):
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        z = np.empty_like(x)
        m, s = _column_sums(x, out, z)
        np.subtract(z, np.log(s).astype(x.dtype), out=out)
        i, j = _odd_columns(m, s)
        if i.size:
            out[i, :, j] = _through_rows(log_softmax, x, i, j, x.shape[1])


def logsumexp_cols(x, out, nthreads=1):
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m, s = _column_sums(x, np.empty_like(x))
        out[...] = (m + np.log(s))[:, 0]
        i, j = _odd_columns(m, s)
        if i.size:
            out[i, j] = _through_rows(logsumexp, x, i, j, 0)


def _cross_entropy(x, terms_of_block, scale, loss, grad, z_coef, lse):
    """Shared driver.  ``terms_of_block(rows, z)`` (z = x - m of the block) gives
    ``(qz, Q, shift)``: sum_c q_c z_c per row, Q = sum_c q_c (rows, 1) and
    ``shift(gb, a)``, which turns the block's exponentials gb into the gradient
    gb * a - q * scale (a = (scale Q + z_coef lse) / s per row).  ``lse``: None or (n,)."""
    n, k = x.shape
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for rows in _blocks(n, k):
            xb = x[rows]
            m = _row_max(xb)
            z = xb - m                                  # x - m, block-sized temporary
            qz, big_q, shift = terms_of_block(rows, z)
            e = np.exp(z, out=grad[rows] if grad is not None else None)
            s = _row_sum(e, _sums_dtype(e))
            logs = _log_sum(e, s)
            # sum_c q_c (lse - x_c) = Q log s - sum_c q_c (x_c - m); Q: (rows, 1) or scalar
            loss[rows] = (big_q * logs)[:, 0] - qz
            if lse is not None:
                lse[rows] = (m + logs)[:, 0]
                odd = np.flatnonzero(~np.isfinite(m[:, 0]))  # +-inf or NaN max: as logsumexp
                if odd.size:
                    lse[rows][odd] = np.where(np.isnan(xb[odd]).any(axis=1), np.nan, m[odd, 0])
            if grad is not None:
                a = big_q * scale
                if z_coef:
                    a = a + z_coef * (m + logs)
                shift(grad[rows], (a / s).astype(x.dtype))


def ce_index(x, target, weight, ignore_index, smoothing, scale, loss, grad, z_coef, lse,
             correct, nthreads=1):
    """q_c = (1 - eps) w_y [c == y] + eps/k w_c, never built as a (rows, k) array: the
    target's term is a gather, the smoothing term a matrix-vector product (the q array
    and its masked product cost 0.67x the NumPy baseline's time at 65536x10 float64)."""
    n, k = x.shape
    eps = float(smoothing)
    w_sum = float(weight.sum())
    used = weight != 0.0  # a class of weight 0 contributes 0 even where x = -inf
    w_used = weight[used]
    dtype = x.dtype
    ignored = target == ignore_index
    any_ignored = ignored.any()

    def plain_terms(rows, z):
        """q = [c == y]: unit weights, no smoothing, no ignored sample (the common call:
        3 NumPy calls a block where the general terms make ~12; 64x128 CE+grad ~10%)."""
        t = target[rows]
        at = (np.arange(t.shape[0]), t)
        qz = z[at].astype(np.float64)

        def shift(gb, a):
            np.multiply(gb, a, out=gb)
            gb[at] -= dtype.type(scale)

        return qz, 1.0, shift

    def terms_of_block(rows, z):
        t = target[rows]
        keep = t != ignore_index
        tk = np.where(keep, t, 0)
        at = (np.arange(t.shape[0]), tk)
        keep_w = np.where(keep, (1.0 - eps) * weight[tk], 0.0)
        qz = np.where(keep_w != 0.0, keep_w * z[at], 0.0)
        if eps:
            zu = z if used.all() else z[:, used]
            if k < _SHORT_K:  # BLAS for short rows; its lane sums drift on long ones
                wz = zu.astype(np.float64) @ w_used
            else:  # pairwise, products in float64
                wz = np.multiply(zu, w_used, dtype=np.float64).sum(axis=1)
            qz += np.where(keep, (eps / k) * wz, 0.0)
        big_q = np.where(keep, keep_w + (eps / k) * w_sum, 0.0)[:, None]

        def shift(gb, a):
            np.multiply(gb, a, out=gb)
            if eps:
                ey = gb[at]  # the target's term in one rounding, as for the others
                np.subtract(gb, ((eps / k) * scale * weight).astype(dtype), out=gb)
                q_y = keep_w + (eps / k) * weight[tk]
                gb[at] = ey - (q_y * scale).astype(dtype)
            else:
                gb[at] -= (keep_w * scale).astype(dtype)

        return qz, big_q, shift

    plain = not eps and not any_ignored and w_sum == k and bool((weight == 1.0).all())
    _cross_entropy(x, plain_terms if plain else terms_of_block, scale, loss, grad, z_coef,
                   lse)
    if any_ignored:  # exp of a NaN row times q = 0 would leave NaN where 0 is owed
        loss[ignored] = 0.0
        if grad is not None:
            grad[ignored] = 0
    if correct is not None:
        # argmax's first-occurrence rule; a row holding NaN (its max NaN) is never right
        with np.errstate(invalid="ignore"):
            for rows in _blocks(n, k):
                xb, t = x[rows], target[rows]
                tk = np.where(t == ignore_index, 0, t)
                at = np.arange(t.shape[0])
                right = (np.argmax(xb, axis=1) == tk) & (xb[at, tk] == np.max(xb, axis=1))
                correct[rows] = right & (t != ignore_index)


def ce_soft(x, target, weight, smoothing, scale, loss, grad, z_coef, lse, nthreads=1):
    n, k = x.shape
    eps = float(smoothing)

    def terms_of_block(rows, z):
        q = target[rows].astype(np.float64)
        if eps:
            q *= 1.0 - eps
            q += eps / k
        q *= weight
        qz = np.multiply(q, z, dtype=np.float64)
        qz[q == 0] = 0.0  # q_c == 0 terms are 0, also where x = -inf

        def shift(gb, a):
            np.multiply(gb, a, out=gb)
            np.subtract(gb, (q * scale).astype(x.dtype), out=gb)

        return qz.sum(axis=1), q.sum(axis=1, keepdims=True), shift

    _cross_entropy(x, terms_of_block, scale, loss, grad, z_coef, lse)


def info() -> dict:
    return {"numpy": np.__version__, "threads": "1 (NumPy ufuncs are serial)",
            "exp": "NumPy's own (SIMD-dispatched) exp"}
