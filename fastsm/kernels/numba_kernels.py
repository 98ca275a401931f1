"""numba backend: parallel JIT kernels (``prange`` over row blocks) with our own exp.

Design
- PyPI's llvmlite has no SVML, so ``np.exp`` in a Numba loop is one scalar libm call per
  element (~1.9 GB/s here).  ``_exp32``/``_exp64`` are the same branch-free exp as the
  cython backend (Cody-Waite reduction, Taylor polynomial, 2^n from exponent bits in two
  halves so subnormal results are right), written with a bit-cast intrinsic so LLVM
  vectorises the loops.  -inf -> 0 and NaN -> NaN hold without fast-math flags.
- fastmath is granted per function, never globally: ``contract`` (FMA) everywhere,
  ``reassoc`` only on the sum loops (vector reduction), ``nnan``/``nsz`` only on the row
  max (LLVM forms a vector max only with them; a NaN entry still turns its row NaN in the
  exp pass, which has no nnan).  Never on the log-softmax subtraction, where reordering
  (x - m) - log s into x - (m + log s) loses log s when |m| is huge.
- Sums accumulate in float64 (200k float32 classes keep 3e-6), in a function of their
  own: the exp loops carry only ``contract``.  Rows shorter than 32 are shifted block by block and exp runs once over the
  contiguous block, since a 10-element loop never reaches the vector body.
- Each kernel exists twice, serial and ``parallel=True``; calls under ``_MIN_PARALLEL``
  elements take the serial one (a parallel launch costs more than a 64x128 softmax).
  Compilation is lazy (first call per dtype), so ``import fastsm`` compiles nothing.
- Threading layer: 'threadsafe' (omp or tbb) unless the user chose one; if only the
  workqueue layer is available, calls are serialised by a lock, since workqueue aborts on
  concurrent parallel launches.  ``numba.set_num_threads`` is thread-local, so it is
  applied on every call from the calling thread.
"""

from __future__ import annotations

import os
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype

NAME = "numba"
_MIN_PARALLEL = 1 << 15
_SHORT_K = 32
_BLOCK = 2048

if not os.environ.get("NUMBA_THREADING_LAYER"):
    numba.config.THREADING_LAYER = "threadsafe"


# ------------------------------------------------------------------ bit casts and exp
@intrinsic
def _bits_to_float(typingctx, bits):
    if bits == types.int32:
        sig, lltype = types.float32(types.int32), ir.FloatType()
    elif bits == types.int64:
        sig, lltype = types.float64(types.int64), ir.DoubleType()
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], lltype)

    return sig, codegen


@intrinsic
def _float_to_bits(typingctx, value):
    if value == types.float32:
        sig, lltype = types.int32(types.float32), ir.IntType(32)
    elif value == types.float64:
        sig, lltype = types.int64(types.float64), ir.IntType(64)
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], lltype)

    return sig, codegen


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
_LO32, _LOG2E32, _MAGIC32 = _F(-104.0), _F(1.44269504088896341), _F(12582912.0)
_LN2HI32, _LN2LO32 = _F(0.693145751953125), _F(1.428606765330187045e-06)
_C32 = tuple(_F(1.0 / f) for f in (5040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0))
_MAGICBITS32, _BIAS32, _SHIFT32 = np.int32(0x4B400000), np.int32(127), np.int32(23)
_ONE32 = np.int32(1)

_LO64, _LOG2E64, _MAGIC64 = -746.0, 1.4426950408889634074, 6755399441055744.0
_LN2HI64, _LN2LO64 = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_MAGICBITS64, _BIAS64, _SHIFT64 = np.int64(0x4338000000000000), np.int64(1023), np.int64(52)
_ONE64 = np.int64(1)
_FM = {"contract"}


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _exp32(x):
    x = _LO32 if _LO32 > x else x  # NaN stays NaN, -inf -> underflow to 0
    t = x * _LOG2E32 + _MAGIC32
    n = t - _MAGIC32
    # numba widens int32 arithmetic to int64: narrow back so the bit cast is 32-bit
    ni = np.int32(_float_to_bits(t) - _MAGICBITS32)
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
    s1 = _bits_to_float(np.int32((n1 + _BIAS32) << _SHIFT32))
    s2 = _bits_to_float(np.int32((n2 + _BIAS32) << _SHIFT32))
    return p * s1 * s2


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _exp64(x):
    x = _LO64 if _LO64 > x else x
    t = x * _LOG2E64 + _MAGIC64
    n = t - _MAGIC64
    ni = _float_to_bits(t) - _MAGICBITS64
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
    s1 = _bits_to_float((n1 + _BIAS64) << _SHIFT64)
    s2 = _bits_to_float((n2 + _BIAS64) << _SHIFT64)
    return p * s1 * s2


# ------------------------------------------------------------------ row primitives
@njit(fastmath={"nnan", "nsz", "contract"}, error_model="numpy")
def _row_max(x, lo, hi):
    # LLVM does not vectorise a select-based max reduction from Numba's IR, even with
    # fastmath=True (inspect_asm: scalar vmaxss).  Eight independent running maxima
    # break the 4-cycle dependency chain instead: 1.13 ms -> 0.44 ms per 1M float32.
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = x[lo]
    c = lo
    while c + 8 <= hi:
        v0, v1, v2, v3 = x[c], x[c + 1], x[c + 2], x[c + 3]
        v4, v5, v6, v7 = x[c + 4], x[c + 5], x[c + 6], x[c + 7]
        m0 = v0 if v0 > m0 else m0
        m1 = v1 if v1 > m1 else m1
        m2 = v2 if v2 > m2 else m2
        m3 = v3 if v3 > m3 else m3
        m4 = v4 if v4 > m4 else m4
        m5 = v5 if v5 > m5 else m5
        m6 = v6 if v6 > m6 else m6
        m7 = v7 if v7 > m7 else m7
        c += 8
    while c < hi:
        v = x[c]
        m0 = v if v > m0 else m0
        c += 1
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    m4 = m5 if m5 > m4 else m4
    m6 = m7 if m7 > m6 else m6
    m0 = m2 if m2 > m0 else m0
    m4 = m6 if m6 > m4 else m4
    return m4 if m4 > m0 else m0


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
    s = 0.0
    es = e[lo:hi]
    for j in range(es.size):
        s += es[j]
    return s


_CHUNK = 1024


@njit(error_model="numpy")
def _row_exp_sum(x, e, lo, hi, m, store, scratch):
    """sum exp(x[lo:hi] - m); the exponentials go to e[lo:hi] when store, else through
    ``scratch`` (>= _CHUNK elements) one L1-sized chunk at a time."""
    if store:
        _exp_shifted(x, e, lo, hi, m, lo)
        return _sum64(e, lo, hi)
    s = 0.0
    for c0 in range(lo, hi, _CHUNK):
        c1 = min(hi, c0 + _CHUNK)
        _exp_shifted(x, scratch, c0, c1, m, 0)
        s += _sum64(scratch, 0, c1 - c0)
    return s


@njit(fastmath={"contract"}, error_model="numpy")
def _block_exp(e, lo, hi):
    for j in range(lo, hi):
        e[j] = _exp(e[j])


@njit(inline="always", error_model="numpy")
def _row_stats(xf, ef, r0, r1, k, store):
    """(row max, exp-sum) of rows r0..r1 of flat (n*k,) data; the exponentials go to
    ef[r0*k : r1*k] when store, else into scratch allocated here (one per block).

    Long rows go row by row; short rows are shifted first and exp runs once over the
    contiguous block."""
    ms = np.empty(r1 - r0, xf.dtype)
    ss = np.empty(r1 - r0, np.float64)
    if k >= _SHORT_K:
        scratch = np.empty(1 if store else _CHUNK, xf.dtype)
        for i in range(r0, r1):
            lo = i * k
            m = _row_max(xf, lo, lo + k)
            ms[i - r0] = m
            ss[i - r0] = _row_exp_sum(xf, ef, lo, lo + k, m, store, scratch)
        return ms, ss
    buf = ef if store else np.empty((r1 - r0) * k, xf.dtype)
    base = r0 * k if store else 0
    for i in range(r0, r1):
        lo = i * k
        m = _row_max(xf, lo, lo + k)
        ms[i - r0] = m
        for c in range(k):
            buf[base + (i - r0) * k + c] = xf[lo + c] - m
    _block_exp(buf, base, base + (r1 - r0) * k)
    for j in range(r1 - r0):
        acc = 0.0
        for c in range(base + j * k, base + j * k + k):
            acc += buf[c]
        ss[j] = acc
    return ms, ss


# ------------------------------------------------------------------ kernels (flat views)
def _softmax_impl(xf, of, n, k, nblocks, rows_per):
    for b in prange(nblocks):
        r0 = b * rows_per
        r1 = min(n, r0 + rows_per)
        ms, ss = _row_stats(xf, of, r0, r1, k, True)
        for i in range(r0, r1):
            inv = _like(xf, 1.0 / ss[i - r0])
            for c in range(i * k, i * k + k):
                of[c] *= inv


def _log_softmax_impl(xf, of, n, k, nblocks, rows_per):
    for b in prange(nblocks):
        r0 = b * rows_per
        r1 = min(n, r0 + rows_per)
        ms, ss = _row_stats(xf, of, r0, r1, k, False)
        for i in range(r0, r1):
            m = ms[i - r0]
            logs = _like(xf, np.log(ss[i - r0]))
            for c in range(i * k, i * k + k):
                of[c] = (xf[c] - m) - logs


def _logsumexp_impl(xf, out, n, k, nblocks, rows_per):
    for b in prange(nblocks):
        r0 = b * rows_per
        r1 = min(n, r0 + rows_per)
        ms, ss = _row_stats(xf, out, r0, r1, k, False)  # out is not written: store False
        for i in range(r0, r1):
            m = ms[i - r0]
            if np.isfinite(m):
                out[i] = m + np.log(ss[i - r0])
            else:  # +-inf max: the answer is that max, unless the row holds NaN
                v = m
                for c in range(i * k, i * k + k):
                    if np.isnan(xf[c]):
                        v = xf[c]
                        break
                out[i] = v


def _ce_impl(xf, tgt, soft, w, ignore_index, eps, scale, loss, gf, has_grad, n, k,
             nblocks, rows_per):
    """Both target kinds: ``soft`` selects probabilities (tgt flat (n*k,)) or indices."""
    eps_k = eps / k
    keep = 1.0 - eps
    w_sum = 0.0
    for c in range(k):
        w_sum += w[c]
    for b in prange(nblocks):
        r0 = b * rows_per
        r1 = min(n, r0 + rows_per)
        ms, ss = _row_stats(xf, gf, r0, r1, k, has_grad)
        for i in range(r0, r1):
            m = ms[i - r0]
            s = ss[i - r0]
            lo = i * k
            logs = np.log(s)
            if soft:
                qz = 0.0
                big_q = 0.0
                for c in range(k):
                    q = w[c] * (keep * tgt[lo + c] + eps_k)
                    z = np.float64(xf[lo + c] - m)
                    qz += q * z if q != 0.0 else 0.0
                    big_q += q
                loss[i] = big_q * logs - qz
                if has_grad:
                    a = _like(xf, scale * big_q / s)
                    for c in range(k):
                        q = w[c] * (keep * tgt[lo + c] + eps_k)
                        gf[lo + c] = gf[lo + c] * a - _like(xf, scale * q)
            else:
                y = np.int64(tgt[i])  # a no-op for index targets; types the soft case
                if y == ignore_index:
                    loss[i] = 0.0
                    if has_grad:
                        for c in range(lo, lo + k):
                            gf[c] = 0
                    continue
                wy = w[y]
                lval = keep * wy * (logs - (np.float64(xf[lo + y]) - np.float64(m)))
                if eps != 0.0:
                    wz = 0.0
                    for c in range(k):
                        wz += w[c] * np.float64(xf[lo + c] - m)
                    lval += eps_k * (w_sum * logs - wz)
                loss[i] = lval
                if has_grad:
                    a = _like(xf, scale * (keep * wy + eps_k * w_sum) / s)
                    bq = scale * eps_k
                    for c in range(k):
                        gf[lo + c] = gf[lo + c] * a - _like(xf, bq * w[c])
                    gf[lo + y] -= _like(xf, scale * keep * wy)


def _pair(impl):
    """(serial, parallel) jitted versions of one kernel, compiled lazily."""
    fm = {"contract"}
    return (njit(fastmath=fm, nogil=True, error_model="numpy")(impl),
            njit(parallel=True, fastmath=fm, nogil=True, error_model="numpy")(impl))


_SOFTMAX = _pair(_softmax_impl)
_LOG_SOFTMAX = _pair(_log_softmax_impl)
_LOGSUMEXP = _pair(_logsumexp_impl)
_CE = _pair(_ce_impl)

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
    """(0 serial / 1 parallel, number of row blocks, rows per block).

    Short rows go in blocks of about _BLOCK elements (the block-exp scratch); long rows
    in one block per thread."""
    short_rows = max(1, _BLOCK // k) if k < _SHORT_K else 0
    if nthreads < 2 or n < 2 or n * k < _MIN_PARALLEL:
        rows_per = short_rows or n
        return 0, -(-n // rows_per), rows_per
    if not _initialised:
        _init_threading()
    nt = min(nthreads, numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != nt:
        numba.set_num_threads(nt)  # thread-local in numba: apply on the calling thread
    rows_per = short_rows or -(-n // nt)
    return 1, -(-n // rows_per), rows_per


def _call(pair, n, k, nthreads, *args):
    which, nblocks, rows_per = _plan(n, k, nthreads)
    if which == 1 and _layer_lock is not None:
        with _layer_lock:
            return pair[1](*args, nblocks, rows_per)
    return pair[which](*args, nblocks, rows_per)


def softmax(x, out, nthreads=1):
    n, k = x.shape
    _call(_SOFTMAX, n, k, nthreads, x.reshape(-1), out.reshape(-1), n, k)


def log_softmax(x, out, nthreads=1):
    n, k = x.shape
    _call(_LOG_SOFTMAX, n, k, nthreads, x.reshape(-1), out.reshape(-1), n, k)


def logsumexp(x, out, nthreads=1):
    n, k = x.shape
    _call(_LOGSUMEXP, n, k, nthreads, x.reshape(-1), out, n, k)


_NO_GRAD = {np.dtype(np.float32): np.empty(1, np.float32),
            np.dtype(np.float64): np.empty(1, np.float64)}


def ce_index(x, target, weight, ignore_index, smoothing, scale, loss, grad, nthreads=1):
    n, k = x.shape
    gf = _NO_GRAD[x.dtype] if grad is None else grad.reshape(-1)
    _call(_CE, n, k, nthreads, x.reshape(-1), target, False, weight, ignore_index,
          float(smoothing), float(scale), loss, gf, grad is not None, n, k)


def ce_soft(x, target, weight, smoothing, scale, loss, grad, nthreads=1):
    n, k = x.shape
    gf = _NO_GRAD[x.dtype] if grad is None else grad.reshape(-1)
    _call(_CE, n, k, nthreads, x.reshape(-1), target.reshape(-1), True, weight, np.int64(0),
          float(smoothing), float(scale), loss, gf, grad is not None, n, k)


def info() -> dict:
    layer = numba.threading_layer() if _initialised else f"{numba.config.THREADING_LAYER} (not started)"
    return {"numba": numba.__version__, "threading_layer": layer,
            "max_threads": numba.config.NUMBA_NUM_THREADS,
            "exp": "own vectorised exp (bit-cast intrinsic; no SVML)",
            "parallel_threshold_elements": _MIN_PARALLEL}
