# The cython backend's kernels, written in Cython: included by _cython_v4.pyx,
# _cython_v3.pyx and _cython_base.pyx, which setup.py compiles with -march=x86-64-v4,
# -march=x86-64-v3 and the compiler's baseline; fastsm/kernels/cython_kernels.py loads the
# widest one this CPU runs.
#
# Design
# - Entry points take ``const`` typed memoryviews (read-only input works), release the GIL
#   and walk row ranges through pointers taken from them: ``cdef inline ... noexcept nogil``
#   row functions over ``real`` (float/double fused), no C row kernel.  The only C here is
#   what Cython has no words for: the OpenMP header probe and the CPU check of
#   ``isa_level`` (``__builtin_cpu_supports`` takes only string literals).
# - Vectorisation without -ffast-math: gcc vectorises a loop only where the C semantics
#   allow it, so
#   * the exp (``_exp``: Cody-Waite reduction, Taylor polynomial, 2^n in two halves from
#     exponent bits set through a ``cdef union``) is inlined into loops with no
#     reduction: ``e[c] = _exp(x[c] - m)``;
#   * reductions (max, sums) run on ``_LANES`` independent accumulators in a local array,
#     ``acc[l] += v[c + l]``: the fixed inner loop becomes one vector operation per
#     block, where a single running sum is a chain gcc may not reorder;
#   * the max runs on the floats' order-preserving integer keys (an integer max reduction
#     vectorises; the float select x > m ? x : m does not, lanes or not).
#   The object code was read: ``python -m benchmarks.vector_report`` counts each build's
#   vector instructions per function (benchmarks/results/cython_vs_c_vectors.txt: the v4
#   build's _rows runs its exp, max and sums on zmm registers, the v3 build's on ymm).
# - Sums: float rows sum in float over lanes within chunks of _CHUNK elements, the chunk
#   sums in double (each lane adds at most 64 terms in [0, 1]); double rows in double.
# - Near zero (log-sum-exp of [0, -40] is 4.2e-18, not 0): where a row's exp-sum s is
#   below 2, the log is log1p of the sum without the max's own 1 (``_log_sum``).  Long
#   rows sum again without the first maximal element for those rows only; short rows
#   (``_block_exp``): float rows use s - 1 of the double sum unless it is under 2^-20,
#   double rows sum the terms under 1 apart from the 1s, which they count.
# - Short rows (K < _SHORT_K): a 10-element loop never reaches a vector body, so a block
#   of rows is shifted row by row and one exp runs over the whole contiguous block.
# - Threads: ``prange(..., schedule='dynamic')`` over chunks of ~64k elements, as the c
#   backend; calls under _MIN_PARALLEL elements, and nthreads=1 (a forked child), run on
#   the calling thread.  Scratch lives on each thread's stack.

from cython.parallel cimport prange
from libc.math cimport log, log1p, isfinite, NAN
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uint8_t

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FSM_OPENMP 1
    #else
    #define FSM_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    #endif
    /* which x86-64 level this CPU runs: 4 (AVX-512), 3 (AVX2, FMA), else 0 */
    static int fsm_isa_level(void)
    {
    #if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
        __builtin_cpu_init();
        if (__builtin_cpu_supports("x86-64-v4"))
            return 4;
        if (__builtin_cpu_supports("x86-64-v3"))
            return 3;
    #elif defined(__x86_64__) && defined(__clang__)
        __builtin_cpu_init();
        int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                 __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
        if (v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
            __builtin_cpu_supports("avx512cd"))
            return 4;
        if (v3)
            return 3;
    #endif
        return 0;
    }
    """
    int FSM_OPENMP
    int omp_get_max_threads() nogil
    int fsm_isa_level() nogil

ctypedef fused real:
    float
    double

NAME = "cython"
cdef Py_ssize_t _MIN_PARALLEL = 1 << 15
MIN_PARALLEL = _MIN_PARALLEL
cdef Py_ssize_t _CHUNK_ELEMENTS = 1 << 16   # rows per prange task: ~64k elements
cdef enum:
    _LANE_NONE, _LANE_EXP, _LANE_SOFTMAX, _LANE_LOG_SOFTMAX, _LANE_LSE
cdef enum:
    _LANES = 16        # independent accumulators of a reduction; rows of a lane group
    _CHUNK = 1024      # elements per float partial sum (then added in double)
    _SHORT_K = 32      # rows shorter than this go through _block_exp
    _BLOCK = 2048      # elements of a short-row block (stack scratch)


# ---------------------------------------------------------------- exp, bit casts
cdef union _Bits32:
    float f
    int32_t i
    uint32_t u

cdef union _Bits64:
    double f
    int64_t i
    uint64_t u


cdef inline float _expf(float x) noexcept nogil:
    """e^x, float: relative error ~1e-7 (degree-7 Taylor on |r| <= ln2/2); -inf -> 0,
    NaN -> NaN, subnormal results right (2^n as two normal factors)."""
    cdef _Bits32 t, s1, s2
    cdef float n, r, p
    cdef int32_t ni, n1, n2
    x = <float>-104.0 if <float>-104.0 > x else x
    t.f = x * <float>1.44269504088896341 + <float>12582912.0  # 1.5 * 2^23: round to integer
    n = t.f - <float>12582912.0
    ni = t.i - <int32_t>0x4b400000
    r = x - n * <float>0.693145751953125  # ln2's high part: n times it is exact
    r = r - n * <float>1.428606765330187045e-06
    p = <float>(1.0 / 5040.0)
    p = p * r + <float>(1.0 / 720.0)
    p = p * r + <float>(1.0 / 120.0)
    p = p * r + <float>(1.0 / 24.0)
    p = p * r + <float>(1.0 / 6.0)
    p = p * r + <float>0.5
    p = p * r + <float>1.0
    p = p * r + <float>1.0
    n1 = ni >> 1
    n2 = ni - n1
    s1.u = (<uint32_t>(n1 + 127)) << 23
    s2.u = (<uint32_t>(n2 + 127)) << 23
    return p * s1.f * s2.f


cdef inline double _expd(double x) noexcept nogil:
    """e^x, double: degree-13 Taylor on |r| <= ln2/2, fdlibm's ln2 split; as _expf."""
    cdef _Bits64 t, s1, s2
    cdef double n, r, p
    cdef int64_t ni, n1, n2
    x = -746.0 if -746.0 > x else x
    t.f = x * 1.4426950408889634074 + 6755399441055744.0  # 1.5 * 2^52
    n = t.f - 6755399441055744.0
    ni = t.i - <int64_t>0x4338000000000000
    r = x - n * 6.93147180369123816490e-01
    r = r - n * 1.90821492927058770002e-10
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
    n1 = ni >> 1
    n2 = ni - n1
    s1.u = (<uint64_t>(n1 + 1023)) << 52
    s2.u = (<uint64_t>(n2 + 1023)) << 52
    return p * s1.f * s2.f


cdef inline real _exp(real x) noexcept nogil:
    if real is float:
        return _expf(x)
    else:
        return _expd(x)


# ---------------------------------------------------------------- row reductions
cdef inline int32_t _key32(float v) noexcept nogil:
    """The float's bits as an int32 with the floats' order (an involution)."""
    cdef _Bits32 u
    u.f = v
    return u.i ^ ((u.i >> 31) & 0x7FFFFFFF)


cdef inline int64_t _key64(double v) noexcept nogil:
    cdef _Bits64 u
    u.f = v
    return u.i ^ ((u.i >> 63) & <int64_t>0x7FFFFFFFFFFFFFFF)


cdef inline float _unkey32(int32_t key) noexcept nogil:
    """The float whose _key32 is key (the map is its own inverse)."""
    cdef _Bits32 u
    u.i = key ^ ((key >> 31) & 0x7FFFFFFF)
    return u.f


cdef inline double _unkey64(int64_t key) noexcept nogil:
    cdef _Bits64 u
    u.i = key ^ ((key >> 63) & <int64_t>0x7FFFFFFFFFFFFFFF)
    return u.f


cdef inline real _row_max(const real *x, Py_ssize_t k) noexcept nogil:
    """max of x[:k], k >= 1, as the max of order-preserving integer keys: gcc vectorises
    an integer max reduction (vpmaxsd/vpmaxsq), but not the float one, whose select
    (x > m ? x : m) it may not reorder without -ffinite-math-only.  A NaN may or may
    not win; either way x - m is NaN at the NaN and the row's sum turns NaN.  The loop
    starts at 0, not 1: a length of k - 1 left 64x128 rows a 15-element scalar epilogue
    (a third of the call's time in the C kernels' same loop)."""
    cdef Py_ssize_t c
    cdef int32_t best32, key32
    cdef int64_t best64, key64
    if real is float:
        best32 = _key32(x[0])
        for c in range(k):
            key32 = _key32(x[c])
            best32 = key32 if key32 > best32 else best32
        return _unkey32(best32)
    else:
        best64 = _key64(x[0])
        for c in range(k):
            key64 = _key64(x[c])
            best64 = key64 if key64 > best64 else best64
        return _unkey64(best64)


cdef inline double _sum(const real *e, Py_ssize_t k) noexcept nogil:
    """sum of e[:k] (k <= _CHUNK for float: lanes in float, then double)."""
    cdef real acc[_LANES]
    cdef real part = 0
    cdef Py_ssize_t c, l, b, whole = k - k % _LANES
    for l in range(_LANES):
        acc[l] = 0
    for b in range(whole // _LANES):
        c = b * _LANES
        for l in range(_LANES):
            acc[l] += e[c + l]
    for c in range(whole, k):
        part += e[c]
    cdef double s = part
    for l in range(_LANES):
        s += acc[l]
    return s


cdef inline void _exp_shifted(const real *x, real *e, Py_ssize_t k, real m) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(k):
        e[c] = _exp(x[c] - m)


cdef inline double _row_exp_sum(const real *x, real *e, real *scratch, Py_ssize_t k,
                                real m) noexcept nogil:
    """sum exp(x[:k] - m); the exponentials land in e (or, e NULL, chunk by chunk in
    scratch, _CHUNK elements).  Each chunk is summed right after its exp, in L1."""
    cdef double s = 0.0
    cdef Py_ssize_t c0, n, b
    for b in range((k + _CHUNK - 1) // _CHUNK):
        c0 = b * _CHUNK
        n = k - c0 if k - c0 < _CHUNK else _CHUNK
        if e != NULL:
            _exp_shifted(x + c0, e + c0, n, m)
            s += _sum(e + c0, n)
        else:
            _exp_shifted(x + c0, scratch, n, m)
            s += _sum(scratch, n)
    return s


cdef inline double _log1p_rest(const real *x, const real *e, real *scratch, Py_ssize_t k,
                               real m) noexcept nogil:
    """log1p of sum exp(x - m) over every element but the first maximal one (from e when
    the caller kept the exponentials).  Rows with s < 2 only: finite m, no NaN."""
    cdef Py_ssize_t j = 0, c0, n, c, b
    cdef double t = 0.0
    while x[j] != m:
        j += 1
    for b in range((k + _CHUNK - 1) // _CHUNK):
        c0 = b * _CHUNK
        n = k - c0 if k - c0 < _CHUNK else _CHUNK
        if e != NULL:
            for c in range(n):
                scratch[c] = e[c0 + c]
        else:
            _exp_shifted(x + c0, scratch, n, m)
        if c0 <= j < c0 + n:
            scratch[j - c0] = 0
        t += _sum(scratch, n)
    return log1p(t)


cdef inline double _log_sum(const real *x, const real *e, real *scratch, Py_ssize_t k, real m,
                            double s, double t) noexcept nogil:
    """log(s), s = sum exp(x - m) (the max's own 1 included), to full relative accuracy
    near 0: with t >= 0 (s - 1 known accurately) log1p(t) as log(u) + (t - (u - 1)) / u
    with 1/u taken as 2 - u (exact where the term matters, dropped beyond u = 2); with
    t < 0 and s < 2 the sum again without the max (_log1p_rest)."""
    cdef double u, w
    if t >= 0.0:
        u = 1.0 + t
        w = 2.0 - u
        return log(u) + (t - (u - 1.0)) * (w if w > 0.0 else 0.0)
    if s < 2.0:
        return _log1p_rest(x, e, scratch, k, m)
    return log(s)


cdef inline double _lse_nonfinite(const real *x, Py_ssize_t k, real m) noexcept nogil:
    """logsumexp of a row whose max is +-inf: that max, or NaN if the row holds one."""
    cdef Py_ssize_t c
    for c in range(k):
        if x[c] != x[c]:
            return x[c]
    return m


cdef inline double _row_lse(const real *x, Py_ssize_t k, real m, double logs) noexcept nogil:
    """A row's log-sum-exp from its max and log term (the non-finite max rules as above)."""
    return m + logs if isfinite(m) else _lse_nonfinite(x, k, m)


cdef inline void _block_exp(const real *x, Py_ssize_t nb, Py_ssize_t k, real *m, real *e,
                            double *s, double *t, bint want_t) noexcept nogil:
    """Short rows: m, e = exp(x - m), s = sum e per row of a block of nb rows; with want_t
    also t (see _log_sum): float rows s - 1 where >= 2^-20 (the double sum holds it to
    k * 1e-16), else -1 (the careful path); double rows rest + (ones - 1), the terms
    under 1 summed apart from the 1s (the max's, ties, terms that rounded to 1)."""
    cdef Py_ssize_t i, i0, c, j, l, n = nb * k
    cdef real mi, v, one
    cdef const real *xr
    cdef real *er
    cdef double acc, rest, ones
    cdef double rl[_LANES]
    cdef double ol[_LANES]
    for i in range(nb):
        xr = x + i * k
        er = e + i * k
        mi = _row_max(xr, k)
        m[i] = mi
        for c in range(k):
            er[c] = xr[c] - mi
    for j in range(n):
        e[j] = _exp(e[j])
    i0 = 0
    if want_t and real is double:
        # whole groups of rows summed across rows (vertical loops, strided loads): a row's
        # own sum of a few terms is one latency-bound chain
        while i0 + _LANES <= nb:
            for l in range(_LANES):
                rl[l] = 0.0
                ol[l] = 0.0
            for c in range(k):
                for l in range(_LANES):
                    v = e[(i0 + l) * k + c]
                    one = 1.0 if v >= 1.0 else 0.0
                    rl[l] += v - one * v
                    ol[l] += one
            for l in range(_LANES):
                s[i0 + l] = rl[l] + ol[l]
                t[i0 + l] = rl[l] + (ol[l] - 1.0)
            i0 += _LANES
    for i in range(i0, nb):
        er = e + i * k
        if want_t and real is double:
            rest = 0.0
            ones = 0.0
            for c in range(k):
                v = er[c]
                one = 1.0 if v >= 1.0 else 0.0
                rest += v - one * v  # NaN goes into rest
                ones += one
            s[i] = rest + ones
            t[i] = rest + (ones - 1.0)
        else:
            acc = 0.0
            for c in range(k):
                acc += er[c]
            s[i] = acc
            if want_t:
                t[i] = acc - 1.0 if acc - 1.0 >= 9.5367431640625e-07 else -1.0


cdef inline void _lanes(const real *x, Py_ssize_t k, real *m, real *o, double *s,
                        double *t, bint want_t, int write, real *scratch) noexcept nogil:
    """Short rows across rows: _LANES rows at x (k < _SHORT_K) transposed into v[c][l], so
    the max, the exp and the sums are vertical loops over l, one vector lane per row (a
    row of 10 classes never fills a vector by itself).  m, s (and t, as _block_exp) per
    row; then by ``write``: _LANE_EXP the exponentials at o in row layout (the CE
    gradient rows), _LANE_SOFTMAX the softmax there (the scale fused into the store),
    _LANE_LOG_SOFTMAX the log_softmax, _LANE_LSE the _LANES log-sum-exps (one scalar log
    per row, the rest vertical), _LANE_NONE nothing (the caller finishes row by row)."""
    cdef real v[_SHORT_K][_LANES]
    cdef real mm[_LANES]
    cdef real inv[_LANES]
    cdef double acc[_LANES]
    cdef double ones[_LANES]
    cdef int32_t k32[_LANES]
    cdef int64_t k64[_LANES]
    cdef int32_t key32
    cdef int64_t key64
    cdef real ev, one
    cdef real logs[_LANES]
    cdef Py_ssize_t c, l
    cdef bint keep_x = write == _LANE_LOG_SOFTMAX or write == _LANE_LSE or write == _LANE_NONE
    for c in range(k):
        for l in range(_LANES):
            v[c][l] = x[l * k + c]
    # the max on integer keys, as _row_max
    if real is float:
        for l in range(_LANES):
            k32[l] = _key32(v[0][l])
        for c in range(1, k):
            for l in range(_LANES):
                key32 = _key32(v[c][l])
                k32[l] = key32 if key32 > k32[l] else k32[l]
        for l in range(_LANES):
            mm[l] = _unkey32(k32[l])
    else:
        for l in range(_LANES):
            k64[l] = _key64(v[0][l])
        for c in range(1, k):
            for l in range(_LANES):
                key64 = _key64(v[c][l])
                k64[l] = key64 if key64 > k64[l] else k64[l]
        for l in range(_LANES):
            mm[l] = _unkey64(k64[l])
    for l in range(_LANES):
        acc[l] = 0.0
        ones[l] = 0.0
    for c in range(k):
        if want_t and real is double:
            # the terms under 1 summed apart from the 1s, which are counted (_block_exp)
            for l in range(_LANES):
                ev = _exp(v[c][l] - mm[l])
                if not keep_x:
                    v[c][l] = ev
                one = 1.0 if ev >= 1.0 else 0.0
                acc[l] += ev - one * ev
                ones[l] += one
        else:
            for l in range(_LANES):
                ev = _exp(v[c][l] - mm[l])
                if not keep_x:
                    v[c][l] = ev
                acc[l] += ev
    for l in range(_LANES):
        m[l] = mm[l]
        s[l] = acc[l] + ones[l]
        if want_t and real is double:
            t[l] = acc[l] + (ones[l] - 1.0)
        elif want_t:
            t[l] = acc[l] - 1.0 if acc[l] - 1.0 >= 9.5367431640625e-07 else -1.0
        else:
            t[l] = -1.0
    if write == _LANE_EXP:
        for c in range(k):
            for l in range(_LANES):
                o[l * k + c] = v[c][l]
    elif write == _LANE_SOFTMAX:
        for l in range(_LANES):
            inv[l] = <real>(1.0 / s[l])
        for c in range(k):
            for l in range(_LANES):
                o[l * k + c] = v[c][l] * inv[l]
    elif write == _LANE_LSE:
        for l in range(_LANES):
            o[l] = <real>(mm[l] + _log_sum(x + l * k, <real *>NULL, scratch, k, mm[l], s[l],
                                           t[l])) \
                if isfinite(mm[l]) else <real>_lse_nonfinite(x + l * k, k, mm[l])
    elif write == _LANE_LOG_SOFTMAX:
        for l in range(_LANES):
            logs[l] = <real>_log_sum(x + l * k, <real *>NULL, scratch, k, mm[l], s[l], t[l])
        for c in range(k):
            for l in range(_LANES):
                o[l * k + c] = (v[c][l] - mm[l]) - logs[l]


# ---------------------------------------------------------------- per-row finishers
cdef enum:
    _SOFTMAX, _LOG_SOFTMAX, _LOGSUMEXP, _LSE_PARTS, _CE_INDEX, _CE_SOFT


cdef struct _Ctx:
    int op
    Py_ssize_t k
    void *out                # softmax/log_softmax (n, k), logsumexp (n,), real
    double *m_out            # lse_parts
    double *l_out
    const int64_t *index     # cross-entropy
    const void *soft         # real (n, k)
    const double *w
    int64_t ign
    double eps, eps_k, w_sum, scale, z_coef
    double *loss
    void *grad               # real (n, k) or NULL
    double *lse              # (n,) or NULL
    uint8_t *correct         # (n,) or NULL


cdef inline uint8_t _first_max_is(const real *x, Py_ssize_t k, real m, double s,
                                  int64_t y) noexcept nogil:
    """argmax(x) == y with argmax's first-occurrence rule, and no NaN in the row (s is
    NaN only for a NaN or an infinite max: only those rows scan for NaN)."""
    cdef Py_ssize_t c
    if not x[y] == m:
        return 0
    for c in range(y):
        if x[c] == m:
            return 0
    if s != s:
        for c in range(k):
            if x[c] != x[c]:
                return 0
    return 1


cdef inline double _weighted_shifted_sum(const real *x, const double *w, Py_ssize_t k,
                                         real m) noexcept nogil:
    """sum_c w_c (x_c - m) over nonzero w_c (0 * -inf must not be NaN), compensated
    (TwoSum per lane): the terms are large (x_c - m is -35 on a confident row) while the
    loss they enter is a few units, so plain sums lost up to 5 ulp of it at k = 31."""
    cdef double hi[_LANES]
    cdef double lo[_LANES]
    cdef double d, v, sm, vv, total = 0.0, err = 0.0
    cdef Py_ssize_t c, l, b, whole = k - k % _LANES
    for l in range(_LANES):
        hi[l] = 0.0
        lo[l] = 0.0
    for b in range(whole // _LANES):
        c = b * _LANES
        for l in range(_LANES):
            d = <double>x[c + l] - <double>m
            v = w[c + l] * d if w[c + l] != 0.0 else 0.0
            sm = hi[l] + v
            vv = sm - hi[l]
            lo[l] += (hi[l] - (sm - vv)) + (v - vv)
            hi[l] = sm
    for c in range(whole, k):
        v = w[c] * (<double>x[c] - <double>m) if w[c] != 0.0 else 0.0
        sm = total + v
        vv = sm - total
        err += (total - (sm - vv)) + (v - vv)
        total = sm
    for l in range(_LANES):
        sm = total + hi[l]
        vv = sm - total
        err += (total - (sm - vv)) + (hi[l] - vv) + lo[l]
        total = sm
    return total + err if isfinite(total) else total  # -inf at masked classes: no error term


cdef inline void _finish_ce_index(const _Ctx *cx, Py_ssize_t i, const real *xr, real *er,
                                  real *scratch, real m, double s, double t) noexcept nogil:
    cdef Py_ssize_t k = cx.k, c
    cdef int64_t y = cx.index[i]
    cdef bint ignored = y == cx.ign
    cdef double logs = 0.0, wy, keep_w, l, zl
    cdef real a, b
    if cx.correct != NULL:
        cx.correct[i] = 0 if ignored else _first_max_is(xr, k, m, s, y)
    if not ignored or cx.lse != NULL:
        logs = _log_sum(xr, er, scratch, k, m, s, t)
    if cx.lse != NULL:
        cx.lse[i] = _row_lse(xr, k, m, logs)
    if ignored:
        cx.loss[i] = 0.0
        if er != NULL:
            for c in range(k):
                er[c] = 0
        return
    wy = cx.w[y]
    keep_w = (1.0 - cx.eps) * wy
    # a zero weight contributes 0 even at x = -inf; 0 * logs keeps a dead row NaN
    l = keep_w * (logs - (<double>xr[y] - <double>m)) if keep_w != 0.0 else 0.0 * logs
    if cx.eps != 0.0:
        l += cx.eps_k * (cx.w_sum * logs - _weighted_shifted_sum(xr, cx.w, k, m))
    cx.loss[i] = l
    if er != NULL:
        zl = cx.z_coef * (<double>m + logs) if cx.z_coef != 0.0 else 0.0
        a = <real>((cx.scale * ((1.0 - cx.eps) * wy + cx.eps_k * cx.w_sum) + zl) / s)
        if cx.eps != 0.0:
            for c in range(k):
                er[c] = er[c] * a - <real>(cx.scale * cx.eps_k * cx.w[c])
        else:
            for c in range(k):
                er[c] *= a
        er[y] -= <real>(cx.scale * (1.0 - cx.eps) * wy)


cdef inline void _finish_ce_soft(const _Ctx *cx, Py_ssize_t i, const real *xr, real *er,
                                 real *scratch, real m, double s, double t) noexcept nogil:
    """q_c = w_c ((1 - eps) t_c + eps / K); a q_c of 0 contributes 0 even at x_c = -inf."""
    cdef Py_ssize_t k = cx.k, c, l, b, whole = k - k % _LANES
    cdef const real *tr = (<const real *>cx.soft) + i * k
    cdef double keep = 1.0 - cx.eps
    cdef double qz_acc[_LANES]
    cdef double q_acc[_LANES]
    cdef double qz = 0.0, big_q = 0.0, q, z, logs, zl
    cdef real a
    for l in range(_LANES):
        qz_acc[l] = 0.0
        q_acc[l] = 0.0
    for b in range(whole // _LANES):
        c = b * _LANES
        for l in range(_LANES):
            q = cx.w[c + l] * (keep * <double>tr[c + l] + cx.eps_k)
            z = <double>xr[c + l] - <double>m
            qz_acc[l] += q * z if q != 0.0 else 0.0
            q_acc[l] += q
    for c in range(whole, k):
        q = cx.w[c] * (keep * <double>tr[c] + cx.eps_k)
        qz += q * (<double>xr[c] - <double>m) if q != 0.0 else 0.0
        big_q += q
    for l in range(_LANES):
        qz += qz_acc[l]
        big_q += q_acc[l]
    logs = _log_sum(xr, er, scratch, k, m, s, t)
    cx.loss[i] = big_q * logs - qz
    if cx.lse != NULL:
        cx.lse[i] = _row_lse(xr, k, m, logs)
    if er != NULL:
        zl = cx.z_coef * (<double>m + logs) if cx.z_coef != 0.0 else 0.0
        a = <real>((cx.scale * big_q + zl) / s)
        for c in range(k):
            er[c] = er[c] * a - <real>(cx.scale * cx.w[c] * (keep * <double>tr[c] + cx.eps_k))


cdef inline void _finish(const _Ctx *cx, Py_ssize_t i, const real *xr, real *er,
                         real *scratch, real m, double s, double t) noexcept nogil:
    """The op's own work on row i, given its max m, exp-sum s and t (see _log_sum)."""
    cdef Py_ssize_t k = cx.k, c
    cdef real inv, logs
    cdef real *o
    cdef int op = cx.op
    if op == _SOFTMAX:
        inv = <real>(1.0 / s)
        for c in range(k):
            er[c] *= inv
    elif op == _LOG_SOFTMAX:
        # (x - m) - log s, never x - (m + log s), which loses log s when |m| is huge
        logs = <real>_log_sum(xr, er, scratch, k, m, s, t)
        o = (<real *>cx.out) + i * k
        for c in range(k):
            o[c] = (xr[c] - m) - logs
    elif op == _LOGSUMEXP:
        (<real *>cx.out)[i] = <real>(m + _log_sum(xr, er, scratch, k, m, s, t)) \
            if isfinite(m) else <real>_lse_nonfinite(xr, k, m)
    elif op == _LSE_PARTS:
        cx.m_out[i] = m
        cx.l_out[i] = _log_sum(xr, er, scratch, k, m, s, t) if isfinite(m) \
            else _lse_nonfinite(xr, k, m)
    elif op == _CE_INDEX:
        _finish_ce_index(cx, i, xr, er, scratch, m, s, t)
    else:
        _finish_ce_soft(cx, i, xr, er, scratch, m, s, t)


cdef void _rows(const real *x, const _Ctx *cx, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """Rows [r0, r1): max, exp-sum (exponentials kept where the op's output is them:
    softmax's out, the CE gradient), then the op's finish while the row is in cache."""
    cdef Py_ssize_t k = cx.k, i, j, b, rb, nb, rows
    cdef real *keep = NULL
    cdef real *eb
    cdef real *er
    cdef real m
    cdef double s
    cdef bint want_t = cx.op != _SOFTMAX, lanes_pay
    cdef real scratch[_CHUNK]
    cdef real buf[_BLOCK]
    cdef real mb[_BLOCK]
    cdef double sb[_BLOCK]
    cdef double tb[_BLOCK]
    if cx.op == _SOFTMAX:
        keep = <real *>cx.out
    elif cx.op == _CE_INDEX or cx.op == _CE_SOFT:
        keep = <real *>cx.grad
    if k >= _SHORT_K:
        for i in range(r0, r1):
            er = keep + i * k if keep != NULL else NULL
            m = _row_max(x + i * k, k)
            s = _row_exp_sum(x + i * k, er, scratch, k, m)
            _finish(cx, i, x + i * k, er, scratch, m, s, -1.0)
        return
    # lane groups where they paid in the c backend's measurements: rows under 128 bytes
    # for the ops that finish from x or fuse the softmax store, float CE rows up to 20
    lanes_pay = k * <Py_ssize_t>sizeof(real) < 128 and (
        not keep or cx.op == _SOFTMAX or k <= 20)
    while lanes_pay and r0 + _LANES <= r1:
        if cx.op == _SOFTMAX:
            _lanes(x + r0 * k, k, mb, keep + r0 * k, sb, tb, False, _LANE_SOFTMAX, scratch)
        elif cx.op == _LOG_SOFTMAX:
            _lanes(x + r0 * k, k, mb, (<real *>cx.out) + r0 * k, sb, tb, True,
                   _LANE_LOG_SOFTMAX, scratch)
        elif cx.op == _LOGSUMEXP:
            _lanes(x + r0 * k, k, mb, (<real *>cx.out) + r0, sb, tb, True, _LANE_LSE, scratch)
        else:
            _lanes(x + r0 * k, k, mb, keep + r0 * k if keep != NULL else NULL, sb, tb,
                   want_t, _LANE_EXP if keep != NULL else _LANE_NONE, scratch)
            for j in range(_LANES):
                _finish(cx, r0 + j, x + (r0 + j) * k,
                        keep + (r0 + j) * k if keep != NULL else NULL, scratch, mb[j], sb[j],
                        tb[j])
        r0 += _LANES
    rows = _BLOCK // k
    for b in range((r1 - r0 + rows - 1) // rows):
        rb = r0 + b * rows
        nb = r1 - rb if r1 - rb < rows else rows
        eb = keep + rb * k if keep != NULL else buf
        _block_exp(x + rb * k, nb, k, mb, eb, sb, tb, want_t)
        for j in range(nb):
            _finish(cx, rb + j, x + (rb + j) * k, eb + j * k, scratch, mb[j], sb[j],
                    tb[j] if want_t else -1.0)


# ---------------------------------------------------------------- threads and entry points
cdef inline int _threads_for(Py_ssize_t n, Py_ssize_t k, int nthreads) noexcept nogil:
    if nthreads < 2 or n < 2 or n * k < _MIN_PARALLEL:
        return 1
    return <int>n if n < nthreads else nthreads


cdef void _run(const real *x, const _Ctx *cx, Py_ssize_t n, int nthreads) noexcept nogil:
    cdef int nt = _threads_for(n, cx.k, nthreads)
    cdef Py_ssize_t c, per, r0, r1, rows
    if nt == 1:
        _rows(x, cx, 0, n)
        return
    per = (n + nt - 1) // nt
    rows = _CHUNK_ELEMENTS // cx.k
    if rows < 1:
        rows = 1
    if rows < per:
        per = rows
    for c in prange((n + per - 1) // per, num_threads=nt, schedule="dynamic"):
        r0 = c * per
        r1 = r0 + per
        if r1 > n:
            r1 = n
        _rows(x, cx, r0, r1)


cdef inline void _ctx(_Ctx *cx, int op, Py_ssize_t k, void *out) noexcept:
    cx.op, cx.k, cx.out = op, k, out
    cx.m_out = cx.l_out = cx.loss = cx.lse = NULL
    cx.index, cx.soft, cx.w, cx.grad, cx.correct = NULL, NULL, NULL, NULL, NULL
    cx.ign = 0
    cx.eps = cx.eps_k = cx.w_sum = cx.scale = cx.z_coef = 0.0


def softmax(const real[:, ::1] x, real[:, ::1] out, int nthreads=1):
    """out[r, c] = exp(x[r, c] - m_r) / sum_j exp(x[r, j] - m_r)."""
    cdef _Ctx cx
    _ctx(&cx, _SOFTMAX, x.shape[1], &out[0, 0])
    with nogil:
        _run(&x[0, 0], &cx, x.shape[0], nthreads)


def log_softmax(const real[:, ::1] x, real[:, ::1] out, int nthreads=1):
    """out[r, c] = (x[r, c] - m_r) - log(sum_j exp(x[r, j] - m_r))."""
    cdef _Ctx cx
    _ctx(&cx, _LOG_SOFTMAX, x.shape[1], &out[0, 0])
    with nogil:
        _run(&x[0, 0], &cx, x.shape[0], nthreads)


def logsumexp(const real[:, ::1] x, real[::1] out, int nthreads=1):
    """out[r] = m_r + log(sum_j exp(x[r, j] - m_r))."""
    cdef _Ctx cx
    _ctx(&cx, _LOGSUMEXP, x.shape[1], &out[0])
    with nogil:
        _run(&x[0, 0], &cx, x.shape[0], nthreads)


def lse_parts(const real[:, ::1] x, double[::1] m, double[::1] L, int nthreads=1):
    """m[r] = max_j x[r, j], L[r] = log(sum_j exp(x[r, j] - m[r]))."""
    cdef _Ctx cx
    _ctx(&cx, _LSE_PARTS, x.shape[1], NULL)
    cx.m_out, cx.l_out = &m[0], &L[0]
    with nogil:
        _run(&x[0, 0], &cx, x.shape[0], nthreads)


cdef void _from_parts_rows(const real *x, const double *m, const double *L, real *out,
                           bint log_out, Py_ssize_t r0, Py_ssize_t r1,
                           Py_ssize_t k) noexcept nogil:
    """(x - m_r) - L_r, or its exp, computed in real (m is one of the row's values); a
    row whose max is not finite or whose L is NaN is NaN, as softmax gives it."""
    cdef Py_ssize_t i, c
    cdef real mi, li
    cdef const real *xr
    cdef real *o
    for i in range(r0, r1):
        xr = x + i * k
        o = out + i * k
        mi = <real>m[i]
        li = <real>L[i]
        if not isfinite(mi) or li != li:
            for c in range(k):
                o[c] = <real>NAN
        elif log_out:
            for c in range(k):
                o[c] = (xr[c] - mi) - li
        else:
            for c in range(k):
                o[c] = _exp((xr[c] - mi) - li)


def from_lse_parts(const real[:, ::1] x, const double[::1] m, const double[::1] L,
                   real[:, ::1] out, bint log, int nthreads=1):
    """out = (x - m_r) - L_r (log) or its exp, given each row's lse parts."""
    cdef Py_ssize_t n = x.shape[0], k = x.shape[1], c, per, r0, r1
    cdef int nt = _threads_for(n, k, nthreads)
    cdef const real *xp = &x[0, 0]
    cdef real *op = &out[0, 0]
    cdef const double *mp = &m[0]
    cdef const double *lp = &L[0]
    with nogil:
        if nt == 1:
            _from_parts_rows(xp, mp, lp, op, log, 0, n, k)
        else:
            per = (n + nt - 1) // nt
            for c in prange(nt, num_threads=nt, schedule="static"):
                r0 = c * per
                r1 = r0 + per if r0 + per < n else n
                if r0 < r1:
                    _from_parts_rows(xp, mp, lp, op, log, r0, r1, k)


def ce_index(const real[:, ::1] x, const int64_t[::1] target, const double[::1] weight,
             int64_t ignore_index, double smoothing, double scale, double[::1] loss,
             real[:, ::1] grad, double z_coef, double[::1] lse, uint8_t[::1] correct,
             int nthreads=1):
    """Per-row cross-entropy against class indices; see fastsm/kernels/__init__.py."""
    cdef _Ctx cx
    cdef Py_ssize_t k = x.shape[1], c
    _ctx(&cx, _CE_INDEX, k, NULL)
    cx.index, cx.w, cx.ign = &target[0], &weight[0], ignore_index
    cx.eps, cx.eps_k, cx.scale, cx.z_coef = smoothing, smoothing / k, scale, z_coef
    for c in range(k):
        cx.w_sum += weight[c]
    cx.loss = &loss[0]
    cx.grad = NULL if grad is None else <void *>&grad[0, 0]
    cx.lse = NULL if lse is None else &lse[0]
    cx.correct = NULL if correct is None else &correct[0]
    with nogil:
        _run(&x[0, 0], &cx, x.shape[0], nthreads)


def ce_soft(const real[:, ::1] x, const real[:, ::1] target, const double[::1] weight,
            double smoothing, double scale, double[::1] loss, real[:, ::1] grad,
            double z_coef, double[::1] lse, int nthreads=1):
    """Per-row cross-entropy against probabilities; see fastsm/kernels/__init__.py."""
    cdef _Ctx cx
    cdef Py_ssize_t k = x.shape[1]
    _ctx(&cx, _CE_SOFT, k, NULL)
    cx.soft, cx.w = <const void *>&target[0, 0], &weight[0]
    cx.eps, cx.eps_k, cx.scale, cx.z_coef = smoothing, smoothing / k, scale, z_coef
    cx.loss = &loss[0]
    cx.grad = NULL if grad is None else <void *>&grad[0, 0]
    cx.lse = NULL if lse is None else &lse[0]
    with nogil:
        _run(&x[0, 0], &cx, x.shape[0], nthreads)


def isa_level():
    """4 (x86-64-v4: AVX-512), 3 (x86-64-v3: AVX2, FMA) or 0: which build this CPU runs."""
    return fsm_isa_level()


def info():
    return {
        "openmp": bool(FSM_OPENMP),
        "omp_max_threads": omp_get_max_threads(),
        "exp": "own vectorised exp (Cody-Waite + polynomial) written in Cython, build: "
               + BUILD,
        "parallel_threshold_elements": _MIN_PARALLEL,
    }
