"""numba backend: parallel JIT kernels (``prange`` over row blocks) with our own exp.

Design
- PyPI's llvmlite has no SVML, so ``np.exp`` in a Numba loop is one scalar libm call per
  element (~1.9 GB/s here).  ``_exp32``/``_exp64`` are the same branch-free exp as the
  c and cython backends (Cody-Waite reduction, Taylor polynomial, 2^n from exponent bits in two
  halves so subnormal results are right), written with a bit-cast intrinsic so LLVM
  vectorises the loops.  -inf -> 0 and NaN -> NaN hold without fast-math flags.
- fastmath is granted per function, never globally: ``contract`` (FMA) everywhere,
  ``reassoc`` only on the sum loops (vector reduction).  Never on the log-softmax
  subtraction, where reordering (x - m) - log s into x - (m + log s) loses log s when
  |m| is huge.  The row max runs on order-preserving integer keys (LLVM vectorises an
  integer max reduction, not Numba's float select).
- Vectors: every hot function asks LLVM for 512-bit vectors (``_wide_vectors``); the
  generated code is checked with ``inspect_asm`` (zmm FMAs, vpmaxsd, no gathers).
- Sums accumulate in float64 (200k float32 classes keep 3e-6), in a function of their
  own: the exp loops carry only ``contract``.  Rows shorter than 32 go tile by tile, since
  a 10-element loop never reaches the vector body: rows up to 96 bytes through a
  transposed copy of the tile (max, exp and sums down columns, one lane per row), the
  others shifted and exp run once over the contiguous tile.
- Near zero: the log ops take log1p of the exp-sum without the max's own 1 where the
  sum is below 2 (``_row_stats``' ``ts``, ``_log_sum``), so lse([0, -40]) is 4.2e-18, not
  0: long rows sum again for those rows only; short float32 rows need it only where
  s - 1 < 2^-20, short float64 rows sum their terms with the 1s kept out (see
  ``_row_stats``); in the transposed tiles that costs a compare and a masked add per
  element.
- Rows are walked in L1-sized tiles, each finished (scaled, logged) while in L1; one
  kernel driver (``_tiled``) with one finisher per op.
- Each kernel exists twice, serial and ``parallel=True``; calls under ``MIN_PARALLEL``
  elements take the serial one (a parallel launch costs more than a 64x128 softmax).
  Compilation is lazy (first call per dtype), so ``import fastsm`` compiles nothing, and
  cached on disk (``cache=True``, serial and parallel kernels alike), so a new process
  loads instead of compiling; the first call per signature holds an inter-process lock
  (``_first_call_lock``).  The thread count is the front's (``fastsm/_parallel.py``).
- Threading layer: 'threadsafe' (omp or tbb) unless the user chose one; if only the
  workqueue layer is available, calls are serialised by a lock, since workqueue aborts on
  concurrent parallel launches.  ``numba.set_num_threads`` is thread-local, so it is
  applied on every call from the calling thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
from types import FunctionType

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype

try:
    import fcntl
except ImportError:  # Windows: no inter-process lock around the first compile
    fcntl = None

NAME = "numba"
MIN_PARALLEL = 1 << 15
_SHORT_K = 32
_TILE = 4096  # elements per tile of rows: its input and output stay in L1

if not os.environ.get("NUMBA_THREADING_LAYER"):
    numba.config.THREADING_LAYER = "threadsafe"


# ------------------------------------------------------------------ bit casts and exp
# The other number with the same bits: int32 <-> float32, int64 <-> float64.
_BIT_TWINS = {
    types.int32: (types.float32, ir.FloatType()),
    types.int64: (types.float64, ir.DoubleType()),
    types.float32: (types.int32, ir.IntType(32)),
    types.float64: (types.int64, ir.IntType(64)),
}


@intrinsic
def _reinterpret_bits(typingctx, value):
    """``value``'s bits read as the same-width number of the other kind (a bit cast)."""
    if value not in _BIT_TWINS:
        return None
    twin, lltype = _BIT_TWINS[value]

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], lltype)

    return twin(value), codegen


@intrinsic
def _wide_vectors(typingctx):
    """Ask LLVM for 512-bit vectors in the function this is called from.

    LLVM's x86 tuning for AVX-512 server cores prefers 256-bit vectors; the c
    backend's AVX-512 clone shows 512 pays here.  Numba has no per-function option, so
    the string attribute is put on the function being lowered (every hot function and
    every prange body calls this; an inlined callee takes its caller's attribute).
    4096x1000 exp pass, 1 thread: float64 5.6 -> 3.5 ms, float32 1.42 -> 1.22 ms.
    Harmless without AVX-512; if llvmlite's attribute set changes, this does nothing."""
    def codegen(context, builder, signature, args):
        try:
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        except Exception:  # pragma: no cover - depends on llvmlite internals
            pass
        return context.get_dummy_value()

    return types.none(), codegen


def _like(arr, value):
    """``value`` converted to ``arr``'s dtype (inside jitted code)."""
    return arr.dtype.type(value)


@overload(_like, inline="always")
def _like_overload(arr, value):
    scalar = as_dtype(arr.dtype).type

    def impl(arr, value):
        return scalar(value)

    return impl


_F = np.float32
_LO32, _LOG2E32, _MAGIC32 = _F(-176.0), _F(1.44269504088896341), _F(12582912.0)
_LN2HI32, _LN2LO32 = _F(0.693145751953125), _F(1.428606765330187045e-06)
_C32 = tuple(_F(1.0 / f) for f in (5040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0))
_MAGICBITS32, _BIAS32, _SHIFT32 = np.int32(0x4B400000), np.int32(127), np.int32(23)
_ONE32 = np.int32(1)

_LO64, _LOG2E64, _MAGIC64 = -1418.0, 1.4426950408889634074, 6755399441055744.0
_LN2HI64, _LN2LO64 = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_MAGICBITS64, _BIAS64, _SHIFT64 = np.int64(0x4338000000000000), np.int64(1023), np.int64(52)
_ONE64 = np.int64(1)
_FM = {"contract"}


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _exp32(x):
    # NaN stays NaN; at _LO32, n = -254 makes s1 = s2 = +0: +0 with no underflowing
    # product (rowops.c's fsm_expf: at -104 each -inf mask cost a microcode assist, and
    # rows half -inf took 5x their time)
    x = _LO32 if _LO32 > x else x
    t = x * _LOG2E32 + _MAGIC32
    n = t - _MAGIC32
    # numba widens int32 arithmetic to int64: narrow back so the bit cast is 32-bit
    ni = np.int32(_reinterpret_bits(t) - _MAGICBITS32)
    r = x - n * _LN2HI32
    r = r - n * _LN2LO32
    c = _C32
    p = c[0]
    p = p * r + c[1]
    p = p * r + c[2]
    p = p * r + c[3]
    p = p * r + c[4]
    p = p * r + c[5]
    p = p * r + c[6]
    p = p * r + c[7]
    n1 = np.int32(ni >> _ONE32)
    n2 = np.int32(ni - n1)
    s1 = _reinterpret_bits(np.int32((n1 + _BIAS32) << _SHIFT32))
    s2 = _reinterpret_bits(np.int32((n2 + _BIAS32) << _SHIFT32))
    return p * s1 * s2


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _exp64(x):
    x = _LO64 if _LO64 > x else x  # as _exp32: n = -2046, s1 = s2 = +0
    t = x * _LOG2E64 + _MAGIC64
    n = t - _MAGIC64
    ni = _reinterpret_bits(t) - _MAGICBITS64
    r = x - n * _LN2HI64
    r = r - n * _LN2LO64
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    n1 = ni >> _ONE64
    n2 = ni - n1
    s1 = _reinterpret_bits((n1 + _BIAS64) << _SHIFT64)
    s2 = _reinterpret_bits((n2 + _BIAS64) << _SHIFT64)
    return p * s1 * s2


# ------------------------------------------------------------------ row primitives
def _order_key(bits):
    """Bits of a float mapped to a signed integer with the same order (an involution)."""
    raise NotImplementedError("only callable from jitted code")


@overload(_order_key, inline="always")
def _order_key_by_width(bits):
    # np.int32(...) again: numba widens int32 arithmetic to int64, which would turn the
    # float32 max into a float64 and drag the whole exp pass into float64.
    if bits == types.int32:
        return lambda bits: np.int32(bits ^ ((bits >> np.int32(31)) & np.int32(0x7FFFFFFF)))
    return lambda bits: bits ^ ((bits >> np.int64(63)) & np.int64(0x7FFFFFFFFFFFFFFF))


@njit(error_model="numpy")
def _row_max(x, lo, hi):
    """max of x[lo:hi], hi > lo.  NaN rows need no care here: the exp pass turns them NaN.

    LLVM does not vectorise Numba's float select-max (fcmp+select; the loop vectoriser
    wants the function-wide no-nans attribute, which Numba never sets), so the max runs
    on the floats' order-preserving integer keys, a reduction LLVM does vectorise
    (vpmaxsd/vpmaxsq).  Per 4096x1000 float32, 1 thread: scalar select 3.8 ms, eight
    running maxima 0.78 ms, integer keys 0.58 ms (float64: 1.18 -> 1.14 ms; both are
    then at memory speed)."""
    _wide_vectors()
    xs = x[lo:hi]
    best = _order_key(_reinterpret_bits(xs[0]))
    for j in range(1, xs.size):
        key = _order_key(_reinterpret_bits(xs[j]))
        best = key if key > best else best
    return _reinterpret_bits(_order_key(best))


def _exp(x):
    raise NotImplementedError("only callable from jitted code")


@overload(_exp, inline="always")
def _exp_by_dtype(x):
    kernel = _exp32 if x == types.float32 else _exp64

    def impl(x):
        return kernel(x)

    return impl


# The exp bodies are inlined (Numba IR) into loops compiled with fastmath={"contract"}
# only: under "reassoc" LLVM may fold the magic-number rounding (t + M) - M and merge
# the Cody-Waite split.  Sums get "reassoc" in a separate function that never sees exp.
@njit(fastmath={"contract"}, error_model="numpy")
def _exp_shifted(x, e, lo, hi, m, dst):
    """e[dst + j] = exp(x[lo + j] - m) for j < hi - lo."""
    _wide_vectors()
    # Slices indexed from 0: with x[lo + j] LLVM must allow for Numba's negative-index
    # wraparound and emits gathers (vgatherqps in inspect_asm) instead of plain loads.
    xs = x[lo:hi]
    es = e[dst:dst + (hi - lo)]
    for j in range(xs.size):
        es[j] = _exp(xs[j] - m)


@njit(fastmath={"reassoc", "contract"}, error_model="numpy")
def _sum64(e, lo, hi):
    # float64, not float32 lane sums: LLVM guards the vector loop with a run-time alias
    # check and may fall back to a scalar loop, where a float32 running sum over 1024
    # terms reached 3.7e-6 on 1000 classes (seen only for some array addresses).
    _wide_vectors()
    s = 0.0
    es = e[lo:hi]
    for j in range(es.size):
        s += es[j]
    return s


_CHUNK = 1024


@njit(inline="always", error_model="numpy")
def _row_exp_sum(x, e, lo, hi, m, store, scratch):
    """sum exp(x[lo:hi] - m); the exponentials go to e[lo:hi] when store, else through
    ``scratch`` (>= _CHUNK elements).  Either way one L1-sized chunk is summed right
    after its exp, while it is still in L1."""
    s = 0.0
    for c0 in range(lo, hi, _CHUNK):
        c1 = min(hi, c0 + _CHUNK)
        if store:
            _exp_shifted(x, e, c0, c1, m, c0)
            s += _sum64(e, c0, c1)
        else:
            _exp_shifted(x, scratch, c0, c1, m, 0)
            s += _sum64(scratch, 0, c1 - c0)
    return s


@njit(fastmath={"contract"}, error_model="numpy")
def _block_exp(e, lo, hi):
    _wide_vectors()
    es = e[lo:hi]
    for j in range(es.size):
        es[j] = _exp(es[j])


@njit(fastmath={"contract"}, error_model="numpy")
def _block_exp_but_ones(e, lo, hi):
    """e = exp(e), less the exact 1 of every e == 0 (the row maxima)."""
    _wide_vectors()
    es = e[lo:hi]
    for j in range(es.size):
        d = es[j]
        es[j] = _exp(d) - (1.0 if d == 0.0 else 0.0)


@njit(inline="always", error_model="numpy")
def _workspace(xf, k):
    """(rows per tile, max, sum and sum-less-one per row, exp scratch) for a prange block."""
    tile = max(1, _TILE // k)
    scratch = np.empty(tile * k if k < _SHORT_K else _CHUNK, xf.dtype)
    return (tile, np.empty(tile, xf.dtype), np.empty(tile, np.float64),
            np.empty(tile, np.float64), scratch)


# Short rows across rows: a tile of R rows transposed to vt[c * R + r], so the max, exp and
# sums run down columns of R lanes (plain vector loops over contiguous memory) instead of a
# 10-element loop per row.  Measured (65536 rows, 1 thread, stats and exponentials only,
# interleaved medians, time transposed / row by row): float32 K = 4, 10, 16, 24, 31: 0.55,
# 0.83, 0.83, 0.94, 1.11; float64 K = 4, 8, 15, 24: 0.58, 0.81, 1.04, 1.17.  Whole kernels
# (2 threads, ``benchmarks.ab_kernels``, against the row code): K = 4-16 0.51-0.99 but
# float64 K = 16 1.01-1.03; K = 24 float32 log_softmax 0.90, softmax and CE+grad 1.14
# (the transposition back of the kept exponentials).  Hence rows of up to _T_ROW_BYTES and
# 16 classes, and float32 log ops up to 24.  The 16-row register blocks of the c
# backend's lanes_rows did not vectorise here (scalar moves, 2.5x the row code): LLVM
# could not keep Numba's arrays of 16 apart.  Reading the tile a column at a time
# (strided loads) beat writing vt a row at a time by 5-20%.
_T_ROW_BYTES = 96


@njit(fastmath={"contract"}, error_model="numpy")
def _transpose_in(xb, vt, k, rows):
    _wide_vectors()
    for c in range(k):
        vc = vt[c * rows:c * rows + rows]
        for r in range(vc.size):
            vc[r] = xb[r * k + c]


@njit(fastmath={"contract"}, error_model="numpy")
def _transpose_out(vt, ob, k, rows):
    _wide_vectors()
    for r in range(rows):
        orow = ob[r * k:r * k + k]
        for c in range(k):
            orow[c] = vt[c * rows + r]


@njit(error_model="numpy")
def _column_max(m, v):
    """m = max(m, v) lane by lane, on the integer keys (see _row_max)."""
    _wide_vectors()
    for j in range(m.size):
        a = v[j]
        b = m[j]
        m[j] = a if _order_key(_reinterpret_bits(a)) > _order_key(_reinterpret_bits(b)) else b


@njit(fastmath={"contract"}, error_model="numpy")
def _column_exp_sum(v, m, s, store):
    """s += exp(v - m) lane by lane (in float64); v = those exponentials where store."""
    _wide_vectors()
    for j in range(v.size):
        e = _exp(v[j] - m[j])
        if store:
            v[j] = e
        s[j] += np.float64(e)


@njit(fastmath={"contract"}, error_model="numpy")
def _column_exp_split(v, m, rest, ones, store):
    """As _column_exp_sum, with the terms >= 1 (the max's own, ties, terms that rounded to
    1) counted in ``ones`` and kept out of ``rest``, whose digits t needs; NaN goes into
    rest."""
    _wide_vectors()
    for j in range(v.size):
        e = _exp(v[j] - m[j])
        if store:
            v[j] = e
        one = e >= 1.0
        rest[j] += 0.0 if one else np.float64(e)
        ones[j] += 1.0 if one else 0.0


@njit(inline="always", error_model="numpy")
def _first_max(xr, m):
    """Index of the first element of xr equal to its max m (the last index if none is: a
    row holding NaN, whose sums come out NaN anyway)."""
    j = 0
    while j < xr.size - 1 and xr[j] != m:
        j += 1
    return j


@njit(error_model="numpy")
def _rest_again(xr, m):
    """sum exp(x - m) over a short row but its first maximal element (computed again)."""
    skip = _first_max(xr, m)
    rest = 0.0
    for c in range(xr.size):
        rest += np.float64(_exp(xr[c] - m)) if c != skip else 0.0
    return rest


@njit(inline="always", error_model="numpy")
def _transposed_stats(xb, buf, vt, nb, k, store, ms, ss, ts, want_t):
    """_row_stats for a tile of nb short rows through the transposed copy vt (>= nb * k):
    the same m and s as the row code, lane by lane; t as the row code's (float32: s - 1
    from the float64 sum unless under 2^-20; float64: the terms under 1 summed apart)."""
    vt = vt[:nb * k]
    m = ms[:nb]
    s = ss[:nb]
    t = ts[:nb]
    _transpose_in(xb, vt, k, nb)
    m[:] = vt[:nb]
    for c in range(1, k):
        _column_max(m, vt[c * nb:c * nb + nb])
    s[:] = 0.0
    wide_t = want_t and xb.itemsize == 8
    if wide_t:
        t[:] = 0.0
        for c in range(k):
            _column_exp_split(vt[c * nb:c * nb + nb], m, s, t, store)
        for j in range(nb):
            rest = s[j]
            s[j] = rest + t[j]
            t[j] = rest + (t[j] - 1.0)
    else:
        for c in range(k):
            _column_exp_sum(vt[c * nb:c * nb + nb], m, s, store)
        t[:] = -1.0
        if want_t:
            for j in range(nb):
                if s[j] < 1.0 + 2.0 ** -20:  # rare: predicted
                    t[j] = _rest_again(xb[j * k:j * k + k], m[j])
    if store:
        _transpose_out(vt, buf, k, nb)


@njit(error_model="numpy")
def _short_rest(xb, buf, lo, k, m):
    """sum of a short row's exponentials buf[lo:lo+k] but the first maximal one's."""
    br = buf[lo:lo + k]
    skip = _first_max(xb[lo:lo + k], m)
    rest = 0.0
    for c in range(k):
        rest += br[c] if c != skip else 0.0
    return rest


@njit(inline="always", error_model="numpy")
def _row_stats(xf, ef, r0, r1, k, store, ms, ss, ts, scratch, want_t):
    """ms[j], ss[j] = max and exp-sum of row r0 + j of flat (n*k,) data, for the rows of
    one tile (r0..r1); the exponentials go to ef[r0*k : r1*k] when store, else through
    ``scratch``.  Long rows go row by row; short rows are shifted first and exp runs once
    over the tile, since a 10-element loop never reaches the vector body.

    ts[j]: with ``want_t`` (the log ops), the sum without the max's own 1 to full relative
    accuracy where ``_log_sum`` needs it, else -1.  Long rows: summed again without the
    max where the sum is below 2.  Short float32 rows: -1 (log s of the float64 sum is
    exact enough for a float32 result) unless s - 1 < 2^-20, then summed again without
    the max.  Short float64 rows: the 1s are kept out of the row sum, so it is t to the
    relative accuracy of a plain float64 sum: in the log ops the exp pass subtracts the
    exact 1 of every x == m (counted in the shift); where the exponentials are kept (the
    CE gradient) the sum skips terms >= 1 and counts them.  t = rest + (ones - 1).
    Measured, new/old time against the kernels before the near-zero work (65536x10, 2
    threads, ``benchmarks.ab_kernels``): float32 log ops and CE+grad 1.08-1.24 with
    s - 1 and a separate pass for the rare rows -> 1.02-1.06; float64 log_softmax /
    logsumexp 1.16-1.39 with TwoSum (masked sums: 1.16-1.19) -> 1.07-1.17; CE+grad 1.24
    -> 1.06."""
    if k >= _SHORT_K:
        for i in range(r0, r1):
            lo = i * k
            m = _row_max(xf, lo, lo + k)
            ms[i - r0] = m
            total = _row_exp_sum(xf, ef, lo, lo + k, m, store, scratch)
            ss[i - r0] = total
            ts[i - r0] = _sum_but_max(xf, lo, k, m, scratch) if want_t and total < 2.0 else -1.0
        return
    nb = r1 - r0
    xb = xf[r0 * k:r1 * k]
    if k * xf.itemsize <= _T_ROW_BYTES and (k <= 16 or not store):
        _transposed_stats(xb, ef[r0 * k:r1 * k], scratch, nb, k, store, ms, ss, ts, want_t)
        return
    buf = ef[r0 * k:r1 * k] if store else scratch[:nb * k]
    # float64 log ops: the maxima's exact 1s come out of the exponentials (the scratch
    # holds nothing else) and are counted, so each row's plain sum is t's rest
    tops = want_t and xf.itemsize == 8 and not store
    for j in range(nb):
        m = _row_max(xb, j * k, j * k + k)
        ms[j] = m
        xr = xb[j * k:j * k + k]
        br = buf[j * k:j * k + k]
        if tops:
            ones = 0
            for c in range(k):
                d = xr[c] - m
                br[c] = d
                ones += d == 0.0
            ts[j] = ones - 1.0
        else:
            for c in range(k):
                br[c] = xr[c] - m
    if tops:
        _block_exp_but_ones(buf, 0, nb * k)
    else:
        _block_exp(buf, 0, nb * k)
    for j in range(nb):
        br = buf[j * k:j * k + k]
        if tops:
            rest = 0.0
            for c in range(k):
                rest += br[c]
            ss[j] = rest + (ts[j] + 1.0)
            ts[j] += rest
        elif want_t and xf.itemsize == 8:
            # the kept exponentials: terms >= 1 (the max's, ties, terms that rounded to 1)
            # counted apart from the rest; NaN goes into the rest
            rest = 0.0
            ones = 0
            for c in range(k):
                v = br[c]
                one = v >= 1.0
                rest += 0.0 if one else v
                ones += one
            ss[j] = rest + ones
            ts[j] = rest + (ones - 1)
        else:
            acc = 0.0
            for c in range(k):
                acc += br[c]
            ss[j] = acc
            ts[j] = -1.0
            # float32 results: log(s) of the float64 sum is exact enough unless s - 1 is
            # under 2^-20 (rare, so the branch is predicted): then the terms less one 1
            if want_t and acc < 1.0 + 2.0 ** -20:
                ts[j] = _short_rest(xb, buf, j * k, k, ms[j])


# ------------------------------------------------------------------ kernels (flat views)
def _tiled_rows(xf, ef, n, k, store, aux, nblocks, rows_per):
    """Per prange block, per L1-sized tile of rows, the row stats and then
    ``finish(xf, ef, k, t0, t1, ms, ss, ts, aux)`` for those rows while they are in L1.

    ``ef`` receives the exponentials when ``store`` (softmax output, CE gradient).  Stats
    for all of a block's rows first and a second pass after them wrote the whole output
    twice through memory (4096x1000 float32, 1 thread: 2.35 -> 1.92 ms).  The prange body
    asks for wide vectors itself: Numba outlines it into a function of its own.
    A template: ``_tiled`` gives each kernel its own ``finish``."""
    for b in prange(nblocks):
        _wide_vectors()
        tile, ms, ss, ts, scratch = _workspace(xf, k)
        r1 = min(n, b * rows_per + rows_per)
        for t0 in range(b * rows_per, r1, tile):
            t1 = min(r1, t0 + tile)
            _row_stats(xf, ef, t0, t1, k, store, ms, ss, ts, scratch, want_t)  # noqa: F821
            finish(xf, ef, k, t0, t1, ms, ss, ts, aux)  # noqa: F821 (globals of each copy)


def _tiled(finish, parallel):
    """``_tiled_rows`` jitted with ``finish`` as its finisher, serial or parallel.

    ``finish`` is a global of the copy, not a closure cell: Numba's on-disk cache keys a
    closure by a pickle of its cells, which differs in every process (the cache was written
    and never read).  Cache files are named after qualname and line, and the key holds
    neither the finisher nor the parallel flag: each copy gets its own name."""
    op = finish.py_func.__name__.replace("_finish_", "")
    name = f"_{op}_{'parallel' if parallel else 'serial'}"
    # want_t: the log ops need the sum without the max's 1 (see _row_stats); softmax not
    spec = dict(globals(), finish=finish, want_t=op != "softmax")
    kernel = FunctionType(_tiled_rows.__code__, spec, name)
    kernel.__qualname__ = name
    options = dict(fastmath={"contract"}, nogil=True, error_model="numpy", parallel=parallel)
    try:
        return njit(cache=True, **options)(kernel)
    except RuntimeError:  # no writable cache directory: compile in every process instead
        return njit(**options)(kernel)


@njit(inline="always", error_model="numpy")
def _log_sum(s, t):
    """log(s) for s = sum exp(x - m) over a row, the maximal element's own 1 included;
    t: that sum without the 1, to full accuracy, or -1 where not needed (s >= 2).

    Where s < 2 the other terms lost their low digits against that 1 (logsumexp([0, -40])
    came out 0), so log1p(t) is returned, as log(u) + (t - (u - 1)) * max(2 - u, 0),
    u = 1 + t: one log, no branch (see rowops_impl.h's log_sum for the error terms)."""
    if t >= 0.0:
        u = 1.0 + t
        w = 2.0 - u
        return np.log(u) + (t - (u - 1.0)) * (w if w > 0.0 else 0.0)
    return np.log(s)


@njit(error_model="numpy")
def _sum_but_max(xf, lo, k, m, scratch):
    """sum exp(x[lo:lo+k] - m) over all but the first maximal element, chunk by chunk
    through ``scratch`` so the exp and sum loops stay the vectorised ones.  Called for
    long rows whose sum is below 2 (finite m, no NaN: a maximal j exists), once, while
    the row is in L1/L2.  Rejected, measured: the check and this call in each finisher
    instead of here, 2.5-3.5 us more per 64x128 log_softmax/logsumexp (15-20%)."""
    xs = xf[lo:lo + k]
    j = _first_max(xs, m)
    t = 0.0
    width = min(k, _CHUNK)
    for c0 in range(0, k, width):
        c1 = min(k, c0 + width)
        _exp_shifted(xs, scratch, c0, c1, m, 0)
        if c0 <= j < c1:
            scratch[j - c0] = 0
        t += _sum64(scratch, 0, c1 - c0)
    return t


# Finishers: rows t0..t1 with max ms[i - t0], exp-sum ss[i - t0] and ts (see _row_stats).
# Inner loops index 0-based row slices (see _exp_shifted).
@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def _finish_softmax(xf, of, k, t0, t1, ms, ss, ts, aux):
    for i in range(t0, t1):
        inv = _like(xf, 1.0 / ss[i - t0])
        orow = of[i * k:i * k + k]
        for c in range(k):
            orow[c] *= inv


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def _finish_log_softmax(xf, of, k, t0, t1, ms, ss, ts, aux):
    for i in range(t0, t1):
        m = ms[i - t0]
        logs = _like(xf, _log_sum(ss[i - t0], ts[i - t0]))
        xrow = xf[i * k:i * k + k]
        orow = of[i * k:i * k + k]
        for c in range(k):
            orow[c] = (xrow[c] - m) - logs


@njit(inline="always", error_model="numpy")
def _lse_nonfinite(xf, k, i, m):
    """logsumexp of row i whose max m is +-inf: m, unless the row holds NaN."""
    xrow = xf[i * k:i * k + k]
    for c in range(k):
        if np.isnan(xrow[c]):
            return xrow[c]
    return m


@njit(inline="always", error_model="numpy")
def _finish_logsumexp(xf, ef, k, t0, t1, ms, ss, ts, out):
    for i in range(t0, t1):
        m = ms[i - t0]
        if np.isfinite(m):
            out[i] = m + _log_sum(ss[i - t0], ts[i - t0])
        else:
            out[i] = _lse_nonfinite(xf, k, i, m)


@njit(inline="always", error_model="numpy")
def _finish_lse_parts(xf, ef, k, t0, t1, ms, ss, ts, aux):
    m_out, l_out = aux
    for i in range(t0, t1):
        m = ms[i - t0]
        m_out[i] = m
        l_out[i] = _log_sum(ss[i - t0], ts[i - t0]) if np.isfinite(m) else _lse_nonfinite(xf, k, i, m)


def _store(out, i, value):
    raise NotImplementedError("only callable from jitted code")


@overload(_store, inline="always")
def _store_unless_none(out, i, value):
    """out[i] = value, or nothing where out is None (typed away at compile time)."""
    if isinstance(out, types.NoneType):
        return lambda out, i, value: None

    def impl(out, i, value):
        out[i] = value

    return impl


def _ce_extras(aux):
    raise NotImplementedError("only callable from jitted code")


@overload(_ce_extras, inline="always")
def _ce_extras_by_length(aux):
    """(z_coef, lse out, has lse, correct out, has correct) from a cross-entropy aux tuple:
    its last five items, or none asked for when the caller passed the 10-item tuple: the
    common call, whose outputs are then None, so its rows carry no more array references
    (the unused outputs as arrays cost ~60 ns a row in reference counting: 64x128 float64
    CE+grad 26.4 -> 29.3 us, 1 thread)."""
    if len(aux) == 15:
        return lambda aux: (aux[10], aux[11], aux[12], aux[13], aux[14])
    return lambda aux: (0.0, None, False, None, False)


@njit(inline="always", error_model="numpy")
def _finish_ce(xf, gf, k, t0, t1, ms, ss, ts, aux):
    tgt, soft, w, ignore_index, eps_k, keep, w_sum, scale, loss, has_grad = aux[:10]
    z_coef, lse_out, has_lse, correct, has_correct = _ce_extras(aux)
    for i in range(t0, t1):
        _ce_row(xf, tgt, soft, w, ignore_index, eps_k, keep, w_sum, scale, loss, gf, has_grad,
                z_coef, lse_out, has_lse, correct, has_correct, k, i, ms[i - t0], ss[i - t0],
                ts[i - t0])


@njit(inline="always", error_model="numpy")
def _row_lse(xf, k, i, m, logs):
    return m + logs if np.isfinite(m) else np.float64(_lse_nonfinite(xf, k, i, m))


@njit(error_model="numpy")
def _first_max_is(xrow, m, s, y):
    """argmax(row) == y under argmax's first-occurrence rule, and no NaN in the row (s is
    NaN only for a NaN or an infinite max: those rows scan for NaN)."""
    if not xrow[y] == m:
        return 0
    for c in range(y):
        if xrow[c] == m:
            return 0
    if np.isnan(s):
        for c in range(xrow.size):
            if np.isnan(xrow[c]):
                return 0
    return 1


@njit(fastmath={"reassoc", "contract"}, error_model="numpy")
def _soft_sums(trow, xrow, w, m, keep, eps_k, c0, c1):
    """(sum q_c (x_c - m), sum q_c) over classes c0..c1 of a soft-target row.  Its own
    function for "reassoc" (lane sums, as _sum64): one sequential double sum over 32k
    classes drifted by 55 ulp.  Differences in float64: exact for float32 input."""
    _wide_vectors()
    ts, xs, ws = trow[c0:c1], xrow[c0:c1], w[c0:c1]
    qz = 0.0
    big_q = 0.0
    for c in range(ts.size):
        q = ws[c] * (keep * ts[c] + eps_k)
        qz += q * (np.float64(xs[c]) - np.float64(m)) if q != 0.0 else 0.0
        big_q += q
    return qz, big_q


@njit(fastmath={"reassoc", "contract"}, error_model="numpy")
def _weighted_shift_sum(xrow, w, m, c0, c1):
    """sum w_c (x_c - m) over classes c0..c1 (label smoothing's term); see _soft_sums."""
    _wide_vectors()
    xs, ws = xrow[c0:c1], w[c0:c1]
    wz = 0.0
    for c in range(xs.size):
        wz += ws[c] * (np.float64(xs[c]) - np.float64(m)) if ws[c] != 0.0 else 0.0
    return wz


@njit(inline="always", error_model="numpy")
def _ce_row(xf, tgt, soft, w, ignore_index, eps_k, keep, w_sum, scale, loss, gf, has_grad,
            z_coef, lse_out, has_lse, correct, has_correct, k, i, m, s, t):
    """Loss (and gradient row, from the exponentials already in it) of row i; z_coef, the
    lse and correct outputs (written where has_lse / has_correct): see the kernel contract."""
    lo = i * k
    xrow = xf[lo:lo + k]
    grow = gf[lo:lo + k] if has_grad else gf[0:0]
    if soft:
        logs = _log_sum(s, t)
        if has_lse:
            _store(lse_out, i, _row_lse(xf, k, i, m, logs))
        trow = tgt[lo:lo + k]
        qz = 0.0
        big_q = 0.0
        for c0 in range(0, k, _CHUNK):  # chunk sums added in order: bounded drift
            qz_part, q_part = _soft_sums(trow, xrow, w, m, keep, eps_k, c0, min(k, c0 + _CHUNK))
            qz += qz_part
            big_q += q_part
        loss[i] = big_q * logs - qz
        if has_grad:
            zl = z_coef * (m + logs) if z_coef != 0.0 else 0.0
            a = _like(xf, (scale * big_q + zl) / s)
            for c in range(k):
                q = w[c] * (keep * trow[c] + eps_k)
                grow[c] = grow[c] * a - _like(xf, scale * q)
    else:
        y = np.int64(tgt[i])  # a no-op for index targets; types the soft case
        if has_correct:
            _store(correct, i, 0 if y == ignore_index else _first_max_is(xrow, m, s, y))
        if has_lse:
            _store(lse_out, i, _row_lse(xf, k, i, m, _log_sum(s, t)))
        if y == ignore_index:
            loss[i] = 0.0
            if has_grad:
                for c in range(k):
                    grow[c] = 0
            return
        logs = _log_sum(s, t)
        wy = w[y]
        # a zero weight contributes 0 even where x = -inf (0 log 0 = 0); 0 * logs keeps a
        # dead row (no usable logit: logs is NaN) NaN
        keep_w = keep * wy
        lval = (keep_w * (logs - (np.float64(xrow[y]) - np.float64(m))) if keep_w != 0.0
                else 0.0 * logs)
        if eps_k != 0.0:
            wz = 0.0
            for c0 in range(0, k, _CHUNK):
                wz += _weighted_shift_sum(xrow, w, m, c0, min(k, c0 + _CHUNK))
            lval += eps_k * (w_sum * logs - wz)
        loss[i] = lval
        if has_grad:
            zl = z_coef * (m + logs) if z_coef != 0.0 else 0.0
            a = _like(xf, (scale * (keep * wy + eps_k * w_sum) + zl) / s)
            bq = scale * eps_k
            for c in range(k):
                grow[c] = grow[c] * a - _like(xf, bq * w[c])
            grow[y] -= _like(xf, scale * keep * wy)


def _pair(finish):
    """(serial, parallel) kernels finishing rows with ``finish``, compiled lazily."""
    return _tiled(finish, False), _tiled(finish, True)


_SOFTMAX = _pair(_finish_softmax)
_LOG_SOFTMAX = _pair(_finish_log_softmax)
_LOGSUMEXP = _pair(_finish_logsumexp)
_CE = _pair(_finish_ce)
_LSE_PARTS = _pair(_finish_lse_parts)


def _from_lse_parts_rows(xf, m, L, of, n, k, log_out, nblocks, rows_per):
    """of = (x - m_r) - L_r per row, or its exp; NaN rows where m is not finite or L NaN."""
    for b in prange(nblocks):
        _wide_vectors()
        for i in range(b * rows_per, min(n, b * rows_per + rows_per)):
            xrow = xf[i * k:i * k + k]
            orow = of[i * k:i * k + k]
            mi = _like(xf, m[i])
            li = _like(xf, L[i])
            if not np.isfinite(mi) or np.isnan(li):
                for c in range(k):
                    orow[c] = np.nan
            elif log_out:
                for c in range(k):
                    orow[c] = (xrow[c] - mi) - li
            else:
                for c in range(k):
                    orow[c] = _exp((xrow[c] - mi) - li)


def _compiled(py_func, name, parallel):
    """``py_func`` jitted under its own name per variant (see _tiled on the cache)."""
    kernel = FunctionType(py_func.__code__, globals(), name)
    kernel.__qualname__ = name
    options = dict(fastmath={"contract"}, nogil=True, error_model="numpy", parallel=parallel)
    try:
        return njit(cache=True, **options)(kernel)
    except RuntimeError:
        return njit(**options)(kernel)


_FROM_LSE_PARTS = (_compiled(_from_lse_parts_rows, "_from_lse_parts_serial", False),
                   _compiled(_from_lse_parts_rows, "_from_lse_parts_parallel", True))

_layer_lock = None  # a Lock when only the (thread-unsafe) workqueue layer is usable
_init_lock = threading.Lock()
_initialised = False


def _init_threading():
    global _initialised, _layer_lock
    with _init_lock:
        if _initialised:
            return
        try:
            numba.np.ufunc.parallel._launch_threads()
        except (ValueError, RuntimeError):
            numba.config.THREADING_LAYER = "workqueue"
            numba.np.ufunc.parallel._launch_threads()
        if numba.threading_layer() == "workqueue":
            _layer_lock = threading.Lock()
        _initialised = True


def _plan(n, k, nthreads):
    """(0 serial / 1 parallel, number of row blocks, rows per block): one block per thread;
    each block walks its rows in L1-sized tiles.

    Rejected, measured (4096x1000 float32, 2 threads, medians of 60 interleaved calls):
    blocks of ~64k elements claimed one by one (``set_parallel_chunksize(1)``, as the
    c backend's dynamic chunks) cost idle time, softmax 2.18-2.43 ms vs 2.08-2.22 ms,
    and gained nothing clear beside a 2-thread torch loop (6.78-7.65 vs 7.20-7.58 ms)."""
    if nthreads < 2 or n < 2 or n * k < MIN_PARALLEL:
        return 0, 1, n
    if not _initialised:
        _init_threading()
    nt = min(nthreads, numba.config.NUMBA_NUM_THREADS, n)
    if numba.get_num_threads() != nt:
        numba.set_num_threads(nt)  # thread-local in numba: apply on the calling thread
    rows_per = -(-n // nt)
    return 1, -(-n // rows_per), rows_per


_compile_lock = threading.Lock()
_ready: set = set()  # (kernel, dtype, variant) compiled or loaded from the cache here


@contextlib.contextmanager
def _first_call_lock(kernel):
    """Held around a kernel's first call per signature in this process: that call compiles
    and writes Numba's cache, or reads it.  Numba writes each cache entry as two files; two
    processes compiling the same kernel at once can leave a mismatched pair that crashes the
    next reader (numba#10128, #4807).  An flock on the cache directory makes the processes
    take turns: the first compiles and saves, the others then load."""
    with _compile_lock:
        directory = getattr(getattr(kernel, "_cache", None), "_cache_path", None)
        fd = None
        if directory and fcntl is not None:
            try:
                fd = os.open(os.path.join(directory, "fastsm-compile.lock"),
                             os.O_CREAT | os.O_RDWR, 0o666)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:  # read-only or odd file system: compile without the lock
                if fd is not None:
                    os.close(fd)
                fd = None
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)  # closing releases the flock


def _launch(kernel, which, args):
    if which == 1 and _layer_lock is not None:
        with _layer_lock:
            kernel(*args)
    else:
        kernel(*args)


def _call(pair, variant, n, k, nthreads, *args):
    which, nblocks, rows_per = _plan(n, k, nthreads)
    kernel = pair[which]
    key = (id(kernel), args[0].dtype.num, variant)
    if key in _ready:
        _launch(kernel, which, args + (nblocks, rows_per))
        return
    with _first_call_lock(kernel):
        _launch(kernel, which, args + (nblocks, rows_per))
    _ready.add(key)


def _after_fork_in_child():
    global _compile_lock
    _compile_lock = threading.Lock()  # a parent thread may have held it at fork time


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def softmax(x, out, nthreads=1):
    n, k = x.shape
    _call(_SOFTMAX, 0, n, k, nthreads, x.reshape(-1), out.reshape(-1), n, k, True, ())


def log_softmax(x, out, nthreads=1):
    n, k = x.shape
    _call(_LOG_SOFTMAX, 0, n, k, nthreads, x.reshape(-1), out.reshape(-1), n, k, False, ())


def logsumexp(x, out, nthreads=1):
    n, k = x.shape
    # out doubles as the (unused, store=False) exponential target: same writable type
    _call(_LOGSUMEXP, 0, n, k, nthreads, x.reshape(-1), out, n, k, False, out)


def lse_parts(x, m, L, nthreads=1):
    n, k = x.shape
    _call(_LSE_PARTS, 0, n, k, nthreads, x.reshape(-1), _NO_GRAD[x.dtype], n, k, False, (m, L))


def from_lse_parts(x, m, L, out, log, nthreads=1):
    n, k = x.shape
    _call(_FROM_LSE_PARTS, 0, n, k, nthreads, x.reshape(-1), m, L, out.reshape(-1), n, k,
          bool(log))


_NO_GRAD = {np.dtype(np.float32): np.empty(1, np.float32),
            np.dtype(np.float64): np.empty(1, np.float64)}


_NO_ROWS = np.empty(1, np.float64)
_NO_FLAGS = np.empty(1, np.uint8)


def _ce(x, target, soft, weight, ignore_index, smoothing, scale, loss, grad, z_coef, lse,
        correct, nthreads):
    n, k = x.shape
    has_grad = grad is not None
    gf = grad.reshape(-1) if has_grad else _NO_GRAD[x.dtype]
    eps = float(smoothing)
    # one compiled variant per output set (the flags are runtime values: no recompiles)
    aux = (target, soft, weight, np.int64(ignore_index), eps / k, 1.0 - eps,
           float(np.sum(weight)), float(scale), loss, has_grad)
    if z_coef or lse is not None or correct is not None:
        # flat: with (z_coef, lse, ...) as a tuple inside aux, the kernel's writes to lse
        # were lost (numba 0.68; correct, in the same inner tuple, was written)
        aux += (float(z_coef), _NO_ROWS if lse is None else lse, lse is not None,
                _NO_FLAGS if correct is None else correct, correct is not None)
    _call(_CE, (soft, has_grad, len(aux)), n, k, nthreads, x.reshape(-1), gf, n, k, has_grad,
          aux)


def ce_index(x, target, weight, ignore_index, smoothing, scale, loss, grad, z_coef, lse,
             correct, nthreads=1):
    _ce(x, target, False, weight, ignore_index, smoothing, scale, loss, grad, z_coef, lse,
        correct, nthreads)


def ce_soft(x, target, weight, smoothing, scale, loss, grad, z_coef, lse, nthreads=1):
    _ce(x, target.reshape(-1), True, weight, 0, smoothing, scale, loss, grad, z_coef, lse,
        None, nthreads)


def info() -> dict:
    layer = numba.threading_layer() if _initialised else f"{numba.config.THREADING_LAYER} (not started)"
    return {"numba": numba.__version__, "threading_layer": layer,
            "max_threads": numba.config.NUMBA_NUM_THREADS,
            "exp": "own vectorised exp (bit-cast intrinsic; no SVML)",
            "parallel_threshold_elements": MIN_PARALLEL}
