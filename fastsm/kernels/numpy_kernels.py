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
  Rows of up to _ARGMAX_MAX_K classes find the max by argmax and zero its own term
  (_log_rest): log1p of the rest on every row, with no careful second pass.
- Exponentials with no max subtracted where the data allows (logsumexp and the plain
  cross-entropy of such rows, every non-last-axis kernel): exp(x) needs no x - m pass,
  and its argument is exact.  Allowed means every exp(x) normal and every sum finite;
  the row kernels check the block's range, the column kernels let the floating-point
  flags say so (_unshifted_sums) and fall back to the shifted formulas.
- Every kernel runs its own floating-point steps under ``_quiet()``: a caller's
  np.seterr(all="raise") is theirs, not a reason for FloatingPointError from exp's
  underflow (the numpy backend raised it on ordinary logits).
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

import math

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


def _quiet():
    """No floating-point warning or error from the kernels' own steps, whatever the caller's
    np.seterr: exp underflows on most real rows (np.errstate(all="raise") raised
    FloatingPointError there), inf - inf makes the NaN the contract asks for."""
    return np.errstate(all="ignore")


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


# Flat positions (row start + column) index the maxima: x.reshape(-1)[flat] gathers 64
# values in 0.15 us where x[rows, cols] takes 0.73, and the row starts of a block shape are
# kept (a few shapes, read-only), so a call adds one index array to argmax's.
_ROW_STARTS: dict = {}


def _row_starts(n, k):
    starts = _ROW_STARTS.get((n, k))
    if starts is None:
        starts = np.arange(0, n * k, k)
        starts.flags.writeable = False
        if len(_ROW_STARTS) < 32:
            _ROW_STARTS[(n, k)] = starts
    return starts


def _argmax_rows(x) -> bool:
    """Whether _row_max_at reads the maxima of block x at argmax."""
    return x.shape[1] <= _ARGMAX_MAX_K and not _by_columns(x)


def _row_max_at(x):
    """(m, at): (rows, 1) row maxima of the C-contiguous block x, and where they were read
    at argmax (rows of up to _ARGMAX_MAX_K classes) their flat positions in x (for
    _log_rest); else None.  max() propagates NaN (argmax finds the first NaN), and a row
    of +inf/-inf gives inf - inf = NaN below: the NaN rules of the contract fall out of
    IEEE arithmetic without special cases.  Short rows go column by column (see
    _SHORT_K)."""
    n, k = x.shape
    if not _by_columns(x):
        if k <= _ARGMAX_MAX_K:
            at = np.add(_row_starts(n, k), x.argmax(axis=1))
            return x.reshape(-1)[at][:, None], at
        return _MAX(x, axis=1, keepdims=True), None
    m = x[:, 0].copy()
    for c in range(1, k):
        np.maximum(m, x[:, c], out=m)
    return m[:, None], None


def _row_max(x):
    return _row_max_at(x)[0]


def _log_rest(e, m, at):
    """(rows, 1) log1p of each row's sum without its max's own term, in e's dtype, from
    the C-contiguous exponentials e = exp(x - m) with that term at flat position ``at``
    and the row maxima m (rows, 1).

    The max's term is exactly 1 (x - m = 0), so zeroing it leaves t = s - 1 summed in the
    working precision with a relative error (pairwise: a few eps), where s - 1 from the
    full sum keeps only k eps absolutely: log1p(t) is right far below 1 on every row with
    no second pass (ties stay in t as terms of 1).  Measured against the full float64
    sum with its careful rows (min of 9x3000 calls, 1 thread, log_softmax 64x128 normal *
    2): float32 22.9 -> 16.6 us, float64 34.0 -> 23.6 us (its rows of s < 2 took the
    careful pass), where the NumPy baseline takes 19.8 / 27.0 us.  NaN for a row whose
    max is not finite or NaN, as log(s) gave: the max's term is replaced by m - m (e is
    spent), 0 or NaN, where a 0 would drop the NaN of a row holding +inf (exp(inf - inf))."""
    e.reshape(-1)[at] = np.subtract(m, m).reshape(-1)
    return np.log1p(_SUM(e, axis=1, keepdims=True))


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
    if n * k <= _BLOCK_ELEMS and _SHORT_K <= k <= _SHIFT_MAX_K:
        # one block that one shift serves (the small call), inline and with no np.errstate:
        # x - hi lies in (-_SHIFT_RANGE, 0], so every exp, sum, reciprocal and product is
        # a normal number and no floating-point flag can rise.  64x128 float32: 14.5 ->
        # 11.6 us (timeit, min of 15x3000 calls, 1 thread; the errstate was 0.7 us, the
        # loop's generator, slices and helper calls the rest)
        hi = _MAX(x, axis=None)
        if hi - _MIN(x, axis=None) < _SHIFT_RANGE:  # False for NaN and for any infinity
            np.subtract(x, hi, out=out)
            np.exp(out, out=out)
            s = _SUM(out, axis=1, keepdims=True)
            np.reciprocal(s, out=s)
            np.multiply(out, s, out=out)
            return
    in_place = None  # out is x (the front allows exactly that): asked where it matters
    with _quiet():
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
    _quiet() (log of 0 and of NaN rows).

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
    if n * k <= _BLOCK_ELEMS and _SHORT_K <= k <= _ARGMAX_MAX_K:
        # one block of argmax rows (the small call): the loop's steps below, inline, with
        # x - m in the scratch and the exponentials in out, which is right also where out
        # is x (x is read once, first), so no may_share_memory
        at = np.add(_row_starts(n, k), x.argmax(axis=1))
        m = x.reshape(-1)[at][:, None]
        z = np.empty_like(x)
        with _quiet():
            _column_op(np.subtract, x, m, z, z)
            e = np.exp(z, out=out)
            logs = _log_rest(e, m, at)
            _column_op(np.subtract, z, logs, out, e)  # e is spent: the fill
        return
    in_place = np.may_share_memory(x, out)  # out is x (the front allows exactly that)
    step = max(1, _BLOCK_ELEMS // k)
    scratch = np.empty((min(n, step), k), x.dtype)
    with _quiet():
        for start in range(0, n, step):  # a range, not _blocks: ~0.4 us of a 64x128 call
            # (x - m) - log s, never x - (m + log s): m + log s rounds away log s when
            # |m| is huge (rows of -1e30).  x - m is made once, in out (each broadcast
            # subtract costs a pass: 6 us of a 64x128 call), and exp reads it from there
            if n <= step:  # one block: no views (~0.4 us of a 64x128 call)
                xb, ob, e = x, out, scratch
            else:
                xb, ob = x[start:start + step], out[start:start + step]
                e = scratch[: ob.shape[0]]
            m, at = _row_max_at(xb)
            _column_op(np.subtract, xb, m, ob, None if in_place else ob)
            np.exp(ob, out=e)
            if at is not None:
                logs = _log_rest(e, m, at)
            else:
                logs = _log_sum(e, _row_sum(e, _sums_dtype(e))).astype(ob.dtype)
            _column_op(np.subtract, ob, logs, ob, e)  # e is spent: the fill


def _lse_rows(x, lse=None, m=None, L=None):
    """Per row: the logsumexp into ``lse`` (n,), or its parts, the row max into ``m`` and
    L = log sum exp(x - m) into ``L`` ((n,), float64).  A row whose max is +-inf or NaN
    has L = its logsumexp itself (all -inf: log(0) = -inf; +inf: +inf; NaN wins), as
    scipy does, so its logsumexp is always L there.

    Rows of up to _ARGMAX_MAX_K classes take L from _rest_logs, final on every row.
    Longer rows cost 9 NumPy calls a block: max, fill and subtract, exp, sum, log, a
    compare and count for s >= 2 (False for a NaN s, i.e. a row with a NaN or infinite
    max, and for the rows of s < 2 that need the careful log1p), and the result's add.
    Blocks with a quarter or more of such rows run _log_sum in place; otherwise those
    rows' exponentials and maxima are kept for one pass over all of them per call: done
    per block, the careful sums' ~12 calls came into nearly every block (0.5% of 4096x1000
    bench rows have s < 2) and cost logsumexp 9-10% of its time there; gathering the rows
    of x again after the blocks (max, subtract, exp once more) cost ~3% there."""
    n, k = x.shape
    parts = L is not None
    later = []
    step = max(1, _BLOCK_ELEMS // k)
    scratch = np.empty((min(n, step), k), x.dtype)
    with _quiet():  # once a call: per block it cost 512x32000 (128 blocks) ~2%
        for start in range(0, n, step):
            rows = slice(start, start + step)
            xb = x[rows]
            mb, at = _row_max_at(xb)
            if parts:
                m[rows] = mb[:, 0]
            z = scratch[: xb.shape[0]]
            if at is not None:
                # L in x's dtype: a float32 m + L rounds L once more, half an ulp of L,
                # where casting the sums or L to float64 cost 64x128 logsumexp 1-2 us of 15
                lr = _rest_logs(xb, mb, at, z)
                if lse is not None:
                    np.add(mb[:, 0], lr, out=lse[rows])
                if parts:
                    L[rows] = lr
                continue
            if L is None:
                L = np.empty(n)
            _column_op(np.subtract, xb, mb, z, z)
            np.exp(z, out=z)
            Lb = L[rows]
            s = _row_sum(z, _sums_dtype(z))
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
            careful, mr, zr = (np.concatenate(pieces) for pieces in zip(*later))
            Lr = _careful_logs(x, careful, mr, zr, _row_sum(zr, _sums_dtype(zr)))
            L[careful] = Lr
            if lse is not None:
                lse[careful] = mr[:, 0] + Lr


# Row blocks (of up to _ARGMAX_MAX_K classes) whose values lie inside +-B (by dtype) take
# exp(x) with no shift: every exp(x) and every ratio exp(x_c) / exp(m) >= e^-2B is
# normal and a row's sum (<= 256 e^B) finite, so no step before the gradient's scaling
# can raise a floating-point flag, and no np.errstate is needed (0.7 us of a 64x128 call)
_UNSHIFTED_RANGE = {4: 40.0, 8: 350.0}


def _unshifted(xb, m):
    """(lo, hi), a lower bound of the block's finite values and its largest row max, where
    every value of the block xb (row maxima m) lies inside +-_UNSHIFTED_RANGE or is -inf,
    and no row is all -inf; else None (also for NaN).  -inf, a mask, has exp 0 with no
    flag: masked 64x128 blocks had taken the shifted formulas after this test (logsumexp
    and cross_entropy 0.63-0.65x the NumPy baseline's speed there)."""
    bound = _UNSHIFTED_RANGE[xb.itemsize]
    lo, hi = float(_MIN(xb, axis=None)), float(_MAX(m, axis=None))
    if (lo == -np.inf and -bound <= float(_MIN(m, axis=None))
            and np.count_nonzero(xb < -bound) == np.count_nonzero(xb == -np.inf)):
        lo = -bound  # a bound for the finite values (a min with where= took 60 us here)
    return (lo, hi) if -bound <= lo and hi <= bound else None


# the least normal number by itemsize (float32, float64)
_TINY = {4: float(np.finfo(np.float32).tiny), 8: float(np.finfo(np.float64).tiny)}


def _exp_rest(xb, at, e=None):
    """(e, top, rest) for the block xb, unshifted (only where _unshifted allows it):
    e = exp(x) (into ``e`` if given: C-contiguous, xb's shape), top = each row's max
    term exp(m), read at its flat position ``at`` and set to 0 in e, rest = the row's
    sum of the other terms."""
    e = np.exp(xb, out=e)
    flat = e.reshape(-1)
    top = flat[at]
    flat[at] = 0
    return e, top, _SUM(e, axis=1)


def _rest_logs(xb, m, at, e):
    """(rows,) L = log sum_c exp(x_c - m) of the C-contiguous block xb in its dtype, from
    its row maxima m (rows, 1) at flat positions ``at`` (_row_max_at), as log1p of t, the
    sum without the max's own term over that term (_log_rest): final on every row, also
    far below 1.  ``e``: scratch of xb's shape.

    Where every value lies within +-_UNSHIFTED_RANGE, t = sum_{c != at} exp(x_c) /
    exp(m): no x - m pass (fill and subtract) and no np.errstate, and each exponential
    is of an exact argument (the shifted ones carry x - m's rounding).  Elsewhere x - m
    first; rows whose max is +-inf or NaN get their logsumexp itself (_lse_direct).  With
    the small call's inline path (logsumexp), 64x128 logsumexp takes 0.62 / 0.67 the time
    of the kernels before (float32 / float64; ``python -m benchmarks.ab_kernels
    <checkout> --backends numpy --threads 1``, medians of 60 interleaved calls)."""
    if _unshifted(xb, m) is not None:
        _, top, t = _exp_rest(xb, at, e)
        np.divide(t, top, out=t)
        return np.log1p(t, out=t)
    with _quiet():
        _column_op(np.subtract, xb, m, e, e)
        np.exp(e, out=e)
        lr = _log_rest(e, m, at)[:, 0]
        total = _SUM(lr)
        if total != total:  # NaN: rows with an infinite or NaN max
            odd = np.flatnonzero(np.isnan(lr))
            lr[odd] = _lse_direct(xb[odd])
        return lr


def _careful_logs(x, rows, m, z, s):
    """L for rows ``rows`` of x whose log s is not final (_log_and_final), given their
    maxima m, exponentials z and sums s: the careful log1p (_log_sum) where the max is
    finite, else the logsumexp itself (a row shifted by an infinite or NaN max: log sum
    exp x, as scipy)."""
    finite = np.isfinite(m[:, 0])
    if finite.all():
        return _log_sum(z, s)[:, 0]
    L = np.empty(rows.size)
    L[~finite] = _lse_direct(x[rows[~finite]])
    L[finite] = _log_sum(z[finite], s[finite])[:, 0]
    return L


def _lse_direct(xr):
    """log sum exp x of rows whose max is +-inf or NaN, unshifted: +inf, -inf (all -inf:
    log 0) or NaN (NaN wins), as scipy."""
    return np.log(_SUM(np.exp(xr), axis=1))


def logsumexp(x, out, nthreads=1):
    n, k = x.shape
    if n * k <= _BLOCK_ELEMS and _SHORT_K <= k <= _ARGMAX_MAX_K:
        # one block of argmax rows (the small call): _lse_rows' first case in fewer Python
        # steps (its setup, views and helper calls cost ~1.5 us of a 64x128 call)
        at = np.add(_row_starts(n, k), x.argmax(axis=1))
        m = x.reshape(-1)[at]
        if _unshifted(x, m) is not None:  # _rest_logs' first case, without its call
            _, top, t = _exp_rest(x, at)
            np.divide(t, top, out=t)
            np.add(m, np.log1p(t, out=t), out=out)
            return
    _lse_rows(x, lse=out)


def lse_parts(x, m_out, l_out, nthreads=1):
    _lse_rows(x, m=m_out, L=l_out)


def from_lse_parts(x, m, L, out, log, nthreads=1):
    n, k = x.shape
    with _quiet():
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


def _halving_sum(e, buf=None):
    """(a, 1, b) sums of float64 e (a, R, b) over R, pairwise by halving (in ``buf``, (a,
    >= R // 2, b), if given; the sums are a view of it): each level adds
    the upper half's rows onto the lower half's in one NumPy call (an odd last row onto
    the first), log2 R levels and O(log R) roundings a column, where a sum straight down
    a column (NumPy's axis reduction) makes R: 14 ulp of log_softmax at 600 rows, over the
    4 ulp bar, which kept float64 on the front's transposed copy (0.52-0.65x the NumPy
    baseline's time at 1000x512 along axis 0)."""
    r = e.shape[1]
    if r == 1:
        return e.copy()
    h = r // 2
    buf = np.add(e[:, :h], e[:, h:2 * h], out=None if buf is None else buf[:, :h])
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


# Columns are reduced a chunk of rows at a time (_COL_CHUNK_BYTES of x, rows a multiple
# of _COL_GROUP): x - m and its exp live in one chunk-sized temporary that stays in cache,
# where whole-array passes streamed x - m, the exponentials and their re-reads through
# memory (1000x512 float32 is 2 MB, the size of this machine's L2).  log_softmax then
# writes its output in a second chunked pass, (x - m) - log s, without keeping x - m.
# 512 KB chunks: at 1000x512, 256 KB ones cost float32 log_softmax 4% more and 1 MB ones
# float64 4-10% more (min of 5x200 calls, 1 thread).
_COL_CHUNK_BYTES = 1 << 19


def _chunk_rows(x):
    """Rows of the (a, R, b) array x in one chunk of _COL_CHUNK_BYTES (at least one)."""
    a, _, b = x.shape
    return max(1, _COL_CHUNK_BYTES // x.itemsize // max(1, a * b))


def _group_sums(e, top=None):
    """(a, 1, b) float64 sums of float32 e (a, c, b) over c: groups of _COL_GROUP rows in
    float32 (at most 15 roundings each), the group sums in float64; into ``top`` (a, 1,
    b), if given, the largest group sum (the largest term where there are no groups).
    Measured at 1000x512 float32 (whole-array passes): a float64 sum (its cast) 392 us, a
    float32 one 129 us
    (its sequential error grows with the column); halving pairwise three times in float32
    before the float64 sum cost 0.83-0.90x the NumPy baseline's softmax time where the
    groups gave 1.01-1.06x, and halving in float64 from the first level (the float64
    columns' _halving_sum) 0.61-0.77x where the groups gave 0.77-0.96x."""
    a, r, b = e.shape
    if r < 2 * _COL_GROUP:
        if top is not None:
            _MAX(e, axis=1, keepdims=True, out=top)
        return _SUM(e, axis=1, keepdims=True, dtype=np.float64)
    whole = r - r % _COL_GROUP
    groups = _SUM(e[:, :whole].reshape(a, whole // _COL_GROUP, _COL_GROUP, b), axis=2)
    s = _SUM(groups, axis=1, keepdims=True, dtype=np.float64)
    if top is not None:
        _MAX(groups, axis=1, keepdims=True, out=top)
    if whole < r:
        rest = e[:, whole:]
        s += _SUM(rest, axis=1, keepdims=True, dtype=np.float64)
        if top is not None:
            np.maximum(top, _SUM(rest, axis=1, keepdims=True), out=top)
    return s


def _chunked_sums(x, exps, out, tops=False):
    """float64 (a, 1, b) sums over R of ``exps(xc, ec)`` (writes the exponentials of the
    chunk xc into ec and returns ec), a chunk of rows at a time, into ``out`` if given,
    else a chunk-sized temporary: float32 _group_sums per chunk, the chunks' sums added
    in float64; float64 _halving_sum per chunk and over the chunks' sums (log2 R
    roundings, as one halving of the column).  ``tops``: also, per column (a, 1, b), the
    largest exponential (float64) or the largest of _group_sums' group sums (float32: at
    least the largest exponential, at no cost but a max over the groups), taken from
    each chunk while it is in cache."""
    a, r, b = x.shape
    step = max(_COL_GROUP, _chunk_rows(x) // _COL_GROUP * _COL_GROUP)
    rows = min(step, r)
    tmp = np.empty((a, rows, b), x.dtype) if out is None else None
    wide = x.dtype == np.float64
    if wide:
        # one buffer for every chunk's halving: a new one per chunk (256 KB at 1000x512)
        # came from mmap each time, its page faults 0.4 of the float64 kernels' time
        buf = np.empty((a, rows // 2, b))
    sums = np.empty((a, -(-r // step), b))
    top = np.empty((a, sums.shape[1], b), x.dtype) if tops else None
    for c, start in enumerate(range(0, r, step)):
        xc = x[:, start:start + step]
        ec = exps(xc, tmp[:, : xc.shape[1]] if out is None else out[:, start:start + step])
        if wide:
            if tops:
                _MAX(ec, axis=1, keepdims=True, out=top[:, c:c + 1])
            sums[:, c:c + 1] = _halving_sum(ec, buf)
        else:
            sums[:, c:c + 1] = _group_sums(ec, top[:, c:c + 1] if tops else None)
    if sums.shape[1] > 1:
        sums = _halving_sum(sums) if wide else _SUM(sums, axis=1, keepdims=True)
    return (sums, _MAX(top, axis=1, keepdims=True)) if tops else sums


def _column_sums(x, out=None):
    """(m, s): column max (a, 1, b) and the float64 sum of exp(x - m) over R
    (_chunked_sums); the exponentials go to ``out`` if given.  Callers hold _quiet()."""
    m = _MAX(x, axis=1, keepdims=True)

    def shifted(xc, ec):
        np.subtract(xc, m, out=ec)
        return np.exp(ec, out=ec)

    return m, _chunked_sums(x, shifted, out)


def _unshifted_sums(x, out=None, tops=False):
    """The float64 sum of exp(x) over R, no max subtracted, or None where a floating-point
    flag rose: an exponential outside the normal range (float32: x < -87.3 or > 88.7)
    or a sum that overflows.  Then every term has all its digits, each exponential's
    argument is exact (x - m is rounded), and the max pass and the subtract pass are
    gone: the hardware flags, raised here as errors, are the range check, for free (NumPy's
    exp loops report underflow and overflow; tests/test_fast_paths.py's columns below
    exp's range would fail on a build whose loops did not).  NaN
    gives NaN and +inf inf, flag-free, as the formulas want; -inf gives 0.  The
    exponentials go to ``out`` if given (it must not share memory with x: the caller's
    fallback reads x again); ``tops``: (sums, largest exponentials), _chunked_sums."""
    try:
        with np.errstate(all="raise"):
            return _chunked_sums(x, lambda xc, ec: np.exp(xc, out=ec), out, tops)
    except FloatingPointError:
        return None


def _odd_columns(m, s):
    """(i, j) of the columns for the row kernels: s < 2 or NaN, or a non-finite max."""
    return np.nonzero(~(s[:, 0] >= 2.0) | ~np.isfinite(m[:, 0]))


def _through_rows(kernel, x, i, j, width):
    """``kernel`` (a row kernel) on columns x[i, :, j] gathered as rows; (len(i), width)."""
    rows = np.ascontiguousarray(x[i, :, j])
    res = np.empty((rows.shape[0], width) if width else rows.shape[0], x.dtype)
    kernel(rows, res)
    return res


# Column sums of exp(x) with no shift (_unshifted_sums) make the column kernels' passes
# fewer than the NumPy baseline's max, subtract, exp, sum (and divide or subtract):
# softmax exp, sum, scale; logsumexp exp, sum; log_softmax exp, sum, subtract twice (in
# cache).  logsumexp's accuracy rests on the result's size, checked per column: log(s)
# is within a few eps of lse absolutely (s's relative error), so it needs |lse| >= 2
# (4 ulp of 2 is 8 eps); below that (near-zero logs, scipy gh-18295) and where the
# result is NaN, the columns go through the row kernels.  1000x512 along axis 0, time /
# the kernels before (``python -m benchmarks.ab_kernels <checkout> --backends numpy
# --shapes 1000x512@0 --threads 1``, medians of 60 interleaved calls), float32 /
# float64: softmax 0.62 / 0.60, log_softmax 0.83 / 0.76, logsumexp 0.46 / 0.43.
_LSE_COLUMN_MIN = 2.0


def softmax_cols(x, out, nthreads=1):
    with _quiet():
        s = None
        if not np.may_share_memory(x, out):
            s = _unshifted_sums(x, out)
        # 1/s must stay normal for the scale (s under 2^100 float32, 2^900 float64)
        if s is None or not _MAX(s, axis=None) < (2.0 ** 100 if x.itemsize == 4 else 2.0 ** 900):
            _, s = _column_sums(x, out)  # IEEE gives NaN and +-inf columns their NaN
        np.multiply(out, (1.0 / s).astype(x.dtype), out=out)


def log_softmax_cols(x, out, nthreads=1):
    """(x - m) - L, L = log sum exp(x - m) per column, then one chunked pass of two
    subtracts, the chunk in cache between (one subtract of a float32 m + L rounds off up
    to half an ulp of m + L, many ulp of a small L: 9% of the bench's columns).

    From the unshifted sums (where they exist) m needs no max pass: m = log of the
    largest exponential (float64, taken from the chunks in cache; float32 takes lse
    rounded, below), in x's dtype, is any shift close to the max, and L = log(s e^-m)
    is then exactly the log-sum of exp(x - m): x - m is exact near the max (Sterbenz),
    so (x - m) - L is the log-softmax, and s e^-m is
    sum exp(x - m) to a few eps relative, where log(s) - m would lose |m| eps.  Columns
    with L under log 2 (the careful log1p, _log_sum) or not finite go through the row
    kernels (one such column of the bench's 512 costs 45 us of ~720: a cold cache line
    per row to gather)."""
    with _quiet():
        found = _unshifted_sums(x, tops=True)
        if found is None:
            m, s = _column_sums(x)
            i, j = _odd_columns(m, s)
        elif x.dtype == np.float32:
            # the shift m = lse rounded to float32, L = log(s e^-m) then the rounding's
            # remainder (x - m is exact near the max once L >= log 2, Sterbenz, or rounds
            # by half an ulp of a result as large): no per-column max needed.  L >= log 2
            # where the largest group sum is under s / 2 (so is the largest term); the
            # other columns, and NaN or infinite ones, go through the row kernels.  With
            # the group maxima in place of each chunk's max, float32 log_softmax 1000x512
            # along axis 0 takes 0.70 of the time before the session's column work, where
            # the chunks' maxima gave 0.83 (ab_kernels, --shapes 1000x512@0)
            s, top = found
            m = np.log(s).astype(x.dtype)
            i, j = np.nonzero(~(2.0 * top < s)[:, 0])
            s = s * np.exp(-m.astype(np.float64))
        else:
            s, top = found
            m = np.log(top, dtype=np.float64).astype(x.dtype)
            s = s * np.exp(-m.astype(np.float64))
            i, j = _odd_columns(m, s)
        logs = np.log(s).astype(x.dtype)
        a, r, b = x.shape
        # the odd columns first, while x is x (out may be x), pasted into each chunk while
        # it is in cache: a scatter after the loop wrote a cold cache line per row
        odd = _through_rows(log_softmax, x, i, j, r) if i.size else None
        step = _chunk_rows(x)
        for start in range(0, r, step):
            oc = out[:, start:start + step]
            np.subtract(x[:, start:start + step], m, out=oc)
            np.subtract(oc, logs, out=oc)
            if odd is not None:
                oc[i, :, j] = odd[:, start:start + step]


def logsumexp_cols(x, out, nthreads=1):
    with _quiet():
        s = _unshifted_sums(x)
        if s is not None:
            lse = np.log(s)[:, 0]
            out[...] = lse
            i, j = np.nonzero(~(np.abs(lse) >= _LSE_COLUMN_MIN) | np.isnan(lse))
        else:
            m, s = _column_sums(x)
            out[...] = (m + np.log(s))[:, 0]
            i, j = _odd_columns(m, s)
        if i.size:
            out[i, j] = _through_rows(logsumexp, x, i, j, 0)


def _cross_entropy(x, terms_of_block, scale, loss, grad, z_coef, lse, plain=None):
    """Shared driver.  ``terms_of_block(rows, z)`` (z = x - m of the block) gives
    ``(qz, Q, shift)``: sum_c q_c z_c per row, Q = sum_c q_c (rows, 1) and
    ``shift(gb, a)``, which turns the block's exponentials gb into the gradient
    gb * a - q * scale (a = (scale Q + z_coef lse) / s per row).  ``lse``: None or (n,).
    ``plain``: the class-index targets where q = [c == y] (unit weights, no smoothing,
    none ignored); with no z-loss and no lse asked, blocks that _ce_plain_block takes
    run there."""
    n, k = x.shape
    plain = plain if not z_coef and lse is None else None
    step = max(1, _BLOCK_ELEMS // k)
    with _quiet():  # once a call (see _lse_rows)
        for start in range(0, n, step):
            rows = slice(start, start + step)
            xb = x[rows]
            if plain is not None and _argmax_rows(xb):
                left = _ce_plain_block(xb, plain[rows], scale, loss[rows],
                                       grad[rows] if grad is not None else None)
                if left is None:
                    continue
                m = left  # out of the unshifted range: the shifted formulas below
            else:
                m = _row_max_at(xb)[0]
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
                    lse[rows][odd] = np.where(np.isnan(xb[odd]).any(axis=1), np.nan,
                                              m[odd, 0])
            if grad is not None:
                a = big_q * scale
                if z_coef:
                    a = a + z_coef * (m + logs)
                shift(grad[rows], (a / s).astype(x.dtype))


def _ce_plain_block(xb, t, scale, loss, gb):
    """loss = lse - x_y = (m - x_y) + log1p(rest / e_m) per row, m the row max (read at
    argmax: blocks that _argmax_rows takes), rest = sum of exp(x_c) over c != argmax and
    e_m = exp(m), unshifted; m - x_y is exact in float64.  The gradient, into gb, is
    exp(x) scale / (e_m + rest) - scale [c == y].  None when done; where the block is not
    in the unshifted range (_unshifted), its (rows, 1) maxima, with nothing written.
    With the small call's inline path (ce_index), 64x128 cross_entropy_with_grad took
    0.66 / 0.67 the time of the kernels before (float32 / float64, ab_kernels as in
    _rest_logs).

    One function with no helper calls (_row_max_at, _exp_rest, _column_op) and no context
    manager where none is needed: at 64x128 each Python call or ``with`` costs 0.2-0.7 us
    of a ~20 us kernel.  With them, ce_index's 64x128 cross_entropy_with_grad took 24.2 /
    26.1 us, without them 22.5 / 25.0 (float32 / float64, ab_kernels against e4af92d, 1
    thread, medians of 40); the front's plain call (ce_index_plain) skips 2.5 us more."""
    n, k = xb.shape
    starts = _row_starts(n, k)
    at = np.add(starts, xb.argmax(axis=1))
    xf = xb.reshape(-1)
    m = xf[at]
    lo, hi = float(_MIN(xb, axis=None)), float(_MAX(m))
    bound = _UNSHIFTED_RANGE[xb.itemsize]
    if not (-bound <= lo and hi <= bound):  # NaN, out of range, or a -inf mask
        span = _unshifted(xb, m)
        if span is None:
            return m[:, None]
        lo, hi = span
    e = np.exp(xb, out=gb)
    flat = e.reshape(-1)
    top = flat[at]
    flat[at] = 0
    rest = _SUM(e, axis=1)
    y = np.add(starts, t)
    np.subtract(m, xf[y], out=loss, dtype=np.float64)
    loss += np.log1p(rest / top)
    if gb is None:
        return None
    flat[at] = top
    a = np.add(top, rest, out=rest)  # e / (e_m + rest): the softmax to ~2 ulp
    np.divide(xb.dtype.type(scale), a, out=a)
    fill = np.empty_like(e)  # the (rows, 1) column filled first: see _FILL_MAX_K
    np.copyto(fill, a[:, None])
    # the least probability times the scale, e^(lo - hi) scale / k, may underflow: then
    # np.errstate, else none (0.7 us of a 64x128 call)
    if math.exp(lo - hi) * scale / k < 4 * _TINY[xb.itemsize]:
        with _quiet():
            np.multiply(e, fill, out=e)
    else:
        np.multiply(e, fill, out=e)
    flat[y] -= xb.dtype.type(scale)
    return None


# The bytes of k float64 ones, for a few k: comparing a short weight vector's bytes with
# them takes 0.1 us where its min and max took 1.2 (of a 64x128 cross-entropy's ~20)
_ONES_BYTES: dict = {}


def _unit(weight):
    """Whether every class weight is 1.0."""
    k = weight.shape[0]
    if k > 4096:  # the copy tobytes makes would cost more than the two reductions
        return _MIN(weight) == 1.0 == _MAX(weight)
    ones = _ONES_BYTES.get(k)
    if ones is None:
        ones = np.ones(k).tobytes()
        if len(_ONES_BYTES) < 32:
            _ONES_BYTES[k] = ones
    return weight.tobytes() == ones


def ce_index_plain(x, target, scale, loss, grad, nthreads=1):
    """ce_index for the front's plain call (every target a class, as the front has checked;
    unit weights, no smoothing, no z-loss): the small call goes straight to
    _ce_plain_block, with none of ce_index's tests of its arguments (the targets' check
    and the prelude: 2.5 us of a 22 us 64x128 kernel call)."""
    n, k = x.shape
    if (n * k <= _BLOCK_ELEMS and _argmax_rows(x)
            and _ce_plain_block(x, target, scale, loss, grad) is None):
        return None
    # larger calls, and blocks out of the unshifted range: the driver, as ce_index's plain
    # case (ce_index itself would check the targets and try the small call again)
    _cross_entropy(x, _plain_terms(target, x.dtype, scale), scale, loss, grad, 0.0, None,
                   target)
    return None


def _plain_terms(target, dtype, scale):
    """_cross_entropy's ``terms_of_block`` for q = [c == y]: unit weights, no smoothing, no
    ignored sample (the common call: 3 NumPy calls a block where the general terms make
    ~12; 64x128 CE+grad ~10%)."""

    def terms(rows, z):
        t = target[rows]
        at = (np.arange(t.shape[0]), t)
        qz = z[at].astype(np.float64)

        def shift(gb, a):
            np.multiply(gb, a, out=gb)
            gb[at] -= dtype.type(scale)

        return qz, 1.0, shift

    return terms


def ce_index(x, target, weight, ignore_index, smoothing, scale, loss, grad, z_coef, lse,
             correct, nthreads=1):
    """q_c = (1 - eps) w_y [c == y] + eps/k w_c, never built as a (rows, k) array: the
    target's term is a gather, the smoothing term a matrix-vector product (the q array
    and its masked product cost 0.67x the NumPy baseline's time at 65536x10 float64)."""
    n, k = x.shape
    # q = [c == y] where every target is a class (as uint64 a negative one is >= 2**63;
    # _ce_plain_block indexes flat, where a bad one would read another row), none is
    # ignore_index and the weights are 1: two reductions where the ignored mask and its
    # any() and (weight == 1).all() took ~1 us more of a 64x128 call
    plain = (not smoothing and _MAX(target.view(np.uint64)) < k
             and not (0 <= ignore_index < k and (target == ignore_index).any())
             and _unit(weight))
    # one block (the small call): _cross_entropy's first case, inline and tested first
    # (this prelude had cost 2.5 us of a 22 us 64x128 call, now ~1.x)
    if (plain and n * k <= _BLOCK_ELEMS and z_coef == 0 and lse is None and correct is None
            and _argmax_rows(x) and _ce_plain_block(x, target, scale, loss, grad) is None):
        return None
    eps = float(smoothing)
    dtype = x.dtype
    any_ignored = False
    if not plain:
        ignored = target == ignore_index
        any_ignored = ignored.any()
        w_sum = float(weight.sum())
        used = weight != 0.0  # a class of weight 0 contributes 0 even where x = -inf
        w_used = weight[used]

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

    _cross_entropy(x, _plain_terms(target, dtype, scale) if plain else terms_of_block, scale,
                   loss, grad, z_coef, lse, target if plain else None)
    if any_ignored:  # exp of a NaN row times q = 0 would leave NaN where 0 is owed
        loss[ignored] = 0.0
        if grad is not None:
            grad[ignored] = 0
    if correct is not None:
        # argmax's first-occurrence rule; a row holding NaN (its max NaN) is never right
        with _quiet():
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
