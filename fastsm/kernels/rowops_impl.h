/* Instantiated by rowops.c for T = float (SFX f32; h32 for the half types' float32 compute)
 * and T = double (SFX f64).
 * Needs: T, SFX, EXP (the vectorisable exp of T), INLINE_LOG (log_sum's log of 1 + t, in
 * double: inline and vectorisable for float rows), LANE_GATHER (1: lanes_rows transposes
 * with AVX-512 gathers where the CPU has them), FSM_CLONES. */

#define FSM_CAT2(a, b) a##_##b
#define FSM_CAT(a, b) FSM_CAT2(a, b)
#define N(f) FSM_CAT(f, SFX)

/* Row loops of unknown length: gcc 12 gives each a scalar (or half-width) epilogue, and a
 * row's remainder then cost more than its vectors (float32 softmax, 1 thread: K = 127
 * 1.73 ns an element, K = 128 0.80; a max loop from c = 1 cost 64x128 a third of its
 * time).  So row loops run over whole groups of FSM_VW elements (FSM_WHOLE: the epilogue
 * is compiled but never runs), and the remainder once more over the row's last FSM_VW
 * elements with only the lanes not yet done active: FSM_MAP_ROW's `c >= kv_`, which
 * becomes masked stores and selects (out may alias x: the inactive lanes read results
 * already written, and discard them).  Rows under FSM_VW keep the plain loop. */
#define FSM_VW 16
#define FSM_WHOLE(K) ((K) >= FSM_VW ? (K) & -(ptrdiff_t)FSM_VW : (K))
#define FSM_MAP_ROW(K, c, STMT)                                                           \
    do {                                                                                   \
        const ptrdiff_t kv_ = FSM_WHOLE(K);                                               \
        _Pragma("omp simd") for (ptrdiff_t c = 0; c < kv_; c++) { STMT; }                  \
        if (kv_ < (K)) {                                                                   \
            _Pragma("omp simd") for (ptrdiff_t c = (K) - FSM_VW; c < (K); c++)             \
                if (c >= kv_) { STMT; }                                                    \
        }                                                                                  \
    } while (0)

/* max of a row (K >= 1).  With NaN present the result may or may not be NaN (OpenMP leaves
 * it open): either way x - m is NaN for the NaN entry and the row sum turns NaN. */
FSM_INLINE T N(row_max)(const T *x, ptrdiff_t K)
{
    T m = x[0];
    const ptrdiff_t Kv = FSM_WHOLE(K);
#pragma omp simd reduction(max : m)
    for (ptrdiff_t c = 0; c < Kv; c++)
        m = x[c] > m ? x[c] : m;
    if (Kv < K) { /* the last FSM_VW again: a max may see an element twice */
#pragma omp simd reduction(max : m)
        for (ptrdiff_t c = K - FSM_VW; c < K; c++)
            m = x[c] > m ? x[c] : m;
    }
    return m;
}

/* s = sum_c exp(x_c - m), storing the exponentials in e when e != NULL.  The vector lanes
 * sum in T over chunks of FSM_CHUNK elements (each lane adds FSM_CHUNK / width terms, all in
 * [0, 1]) and the chunk sums go into a double: float rows of 200k classes keep their
 * digits without converting every element to double in the hot loop.  On AVX-512 the
 * instantiation's EXP_SUM_512 (rowops.c) runs instead: the same exponentials and chunks, the
 * lanes added in another order. */
FSM_INLINE double N(row_exp_sum)(const T *x, T *e, ptrdiff_t K, T m)
{
#if defined(EXP_SUM_512) && FSM_EXP_512
    if (fsm_x86_level() == 2)
        return EXP_SUM_512(x, e, K, m, NULL, NULL);
#endif
    double s = 0.0;
    /* stored exponentials keep gcc's epilogue: see FSM_MAP_ROW */
    const ptrdiff_t Kv = e ? K : FSM_WHOLE(K);
    for (ptrdiff_t c0 = 0; c0 < Kv; c0 += FSM_CHUNK) {
        ptrdiff_t c1 = (Kv - c0 < FSM_CHUNK) ? Kv : c0 + FSM_CHUNK;
        T part = 0;
        if (e) {
#pragma omp simd reduction(+ : part)
            for (ptrdiff_t c = c0; c < c1; c++) {
                T v = EXP(x[c] - m);
                e[c] = v;
                part += v;
            }
        } else {
#pragma omp simd reduction(+ : part)
            for (ptrdiff_t c = c0; c < c1; c++)
                part += EXP(x[c] - m);
        }
        s += (double)part;
    }
    if (Kv < K) { /* see FSM_MAP_ROW */
        T part = 0;
#pragma omp simd reduction(+ : part)
        for (ptrdiff_t c = K - FSM_VW; c < K; c++) {
            T v = EXP(x[c] - m);
            part += c >= Kv ? v : 0;
        }
        s += (double)part;
    }
    return s;
}

/* row_exp_sum, and the max of the next row xn (K long; NULL: none) to *mn: on AVX-512 in
 * the same loop (see FSM_EXP_SUM_512), elsewhere after it.  c backend, 2 threads, new/old
 * (ab_kernels against 402d9e2): softmax, log_softmax, logsumexp and CE+grad at 4096x1000,
 * 16384x256, 2048x128 and 64x128 0.67-0.92 (float32 and float64); rows longer than
 * FSM_NEXT_MAX_BYTES keep the max pass (512x32000 read 0.95-1.08: the two rows' streams
 * no longer fit the L2 beside the exponentials) */
#define FSM_NEXT_MAX_BYTES (64 * 1024)
FSM_INLINE double N(row_exp_sum_next)(const T *x, T *e, ptrdiff_t K, T m, const T *xn, T *mn)
{
#if defined(EXP_SUM_512) && FSM_EXP_512
    if (fsm_x86_level() == 2)
        return EXP_SUM_512(x, e, K, m, xn, mn);
#endif
    double s = N(row_exp_sum)(x, e, K, m);
    if (xn)
        *mn = N(row_max)(xn, K);
    return s;
}

/* Short rows: per-row loops of a few elements never reach the vector body, so a block of
 * rows is shifted first and exp runs once over the whole contiguous block. */
#define FSM_BLOCK 2048
#define FSM_SHORT_K 32

/* log1p(t), t = sum_c exp(x_c - m) over all c but one maximal j: from the exponentials in er
 * when the caller kept them (short-row blocks, softmax/CE-gradient rows), else computed
 * again.  Out of line: inlined into every finisher it slowed the common path (CE+grad
 * 4096x1000 float32 1.6 -> 4.2 ms; the hot loops lost registers to it). */
static FSM_CLONES __attribute__((noinline)) double N(log1p_rest)(const T *xr, const T *er,
                                                                  ptrdiff_t K, T m)
{
    ptrdiff_t j = 0;
    while (xr[j] != m)
        j++;
    double t = 0.0;
    if (er) {
#pragma omp simd reduction(+ : t)
        for (ptrdiff_t c = 0; c < j; c++)
            t += (double)er[c];
#pragma omp simd reduction(+ : t)
        for (ptrdiff_t c = j + 1; c < K; c++)
            t += (double)er[c];
    } else {
#pragma omp simd reduction(+ : t)
        for (ptrdiff_t c = 0; c < j; c++)
            t += (double)EXP(xr[c] - m);
#pragma omp simd reduction(+ : t)
        for (ptrdiff_t c = j + 1; c < K; c++)
            t += (double)EXP(xr[c] - m);
    }
    return log1p(t);
}

/* log(s) for s = sum_c exp(x_c - m) (the maximal element's own term, exactly 1, included).
 * Where s < 2 the other terms, t = s - 1 < 1, lost their low digits against that 1
 * (logsumexp([0, -40]) came out 0), so log1p(t) is returned, with t kept to full accuracy.
 * Short-row blocks pass t in (t >= 0, from block_exp's compensated sum); for long rows
 * (t < 0) log1p_rest sums again, which costs only rows whose top probability exceeds 1/2 a
 * second pass over a row in L1 or L2; other rows pay one compare.  s < 2 implies a finite
 * m and no NaN (either makes s NaN), so a maximal j exists.  er: the row's exponentials,
 * or NULL.
 * Rejected, measured (65536x10 float32, 1 thread, interleaved medians against the old
 * kernels): short rows through log1p_rest like long rows (half of them qualify at std-2
 * logits) 1.5-1.8x the old time; t for every row by skipping the max's index in the sum,
 * 1.25-1.6x; libm's log1p instead of the corrected log below, another 0.2-0.35x. */
#define FSM_INLINE_LOG_MAX_K 20 /* see INLINE_LOG below */
FSM_INLINE double N(log_sum)(const T *xr, const T *er, ptrdiff_t K, T m, double s, double t)
{
    if (t >= 0.0) {
        /* log1p(t) = log(u) + log(1 + d/u), u = 1 + t rounded, d = t - (u - 1) (exact, tiny):
         * one log and no branch.  d/u is taken as d * (2 - u): exact near u = 1, where the
         * term is all of a tiny result, and off by (u - 1)^2 of a term under eps/2 where
         * the result is >= log(1.5); beyond u = 2 the term is dropped (under 1 ulp of a
         * result >= log 2).  A true division cost 3-5% of a 65536x10 call. */
        double u = 1.0 + t;
        double w = 2.0 - u; /* not fmax: gcc called libm's through the PLT, once per row */
        /* INLINE_LOG: our own inline log for float rows (rowops.c), libm's for double.
         * Rows up to FSM_INLINE_LOG_MAX_K take it (CE+grad float32, 2 threads, against
         * libm's: 65536x10 0.83-0.87, 30000x16 0.92-0.95); longer rows keep libm's, as
         * the inline one measured slower there (30000x24 1.06-1.11, 30000x28 1.09; long
         * rows' log(s) below at 64x128: log_softmax and logsumexp 1.05-1.06) */
        double log_u = K <= FSM_INLINE_LOG_MAX_K ? INLINE_LOG(u) : log(u);
        return log_u + (t - (u - 1.0)) * (w > 0.0 ? w : 0.0);
    }
    return (s < 2.0) ? N(log1p_rest)(xr, er, K, m) : log(s);
}

/* NaN if the row holds one, else its (infinite) max: the value of logsumexp when the max
 * is +-inf, where shifting by it would give inf - inf. */
static double N(lse_nonfinite)(const T *xr, ptrdiff_t K, T m)
{
    for (ptrdiff_t c = 0; c < K; c++)
        if (xr[c] != xr[c])
            return xr[c];
    return m;
}

/* Short rows, across rows: FSM_LANES rows at a time, transposed into v[c][lane] so that the
 * max, exp and sums are vertical vector operations, one vector lane per row (a row of 10
 * classes never filled a vector by itself).  gcc vectorises the lane loops; the strided
 * loads and stores of the transposition come out as element inserts and extracts, so float
 * lanes on AVX-512 transpose with gathers and scatters instead (LANE_GATHER, rowops.c).
 * Each lane is one row's own sequence of operations, so a lane's result is the one the
 * same row gets from the row-at-a-time code below (double rows' t excepted: the small
 * terms' own sum here, x87 or TwoSum there; and float rows of 21-31 classes' log, see the
 * finish below).
 * Measured (65536x10 float32 softmax, 1 thread, C probe, interleaved medians): rows one at
 * a time with exp over the block 3.5 ms, lanes with a per-row finisher 1.7 ms, lanes with
 * the softmax scale fused into the store (short_softmax) 1.5 ms; memcpy 0.27 ms. */
#define FSM_LANES 16
/* Up to which row length (bytes) the lanes pay, measured against the row-at-a-time code
 * (1 thread, interleaved medians, time lanes / rows): softmax float32 K = 4, 10, 16, 24,
 * 31: 0.24, 0.48, 0.63, 0.83, 0.81, float64 0.30, 0.71, 1.00, 1.13, 1.18; CE+grad (lanes
 * store the exponentials, the per-row finisher runs after) float32 0.70, 0.73, 0.83, 1.01,
 * 1.02, float64 0.79 (K = 4), 0.95 (8), 0.99 (10), 1.14 (12), 1.22 (16).  The strided
 * stores back to row layout cost most for double rows, and more in the narrower clones
 * (65536x10 float64 CE+grad, C probe: AVX2 build 1.12x, SSE2 build 1.24x the row code),
 * so double CE rows stay row by row.  The SSE2 clone's double lse is 1.13x the row code
 * too; left so (CPUs without AVX2). */
#define FSM_LANE_ROW_BYTES 128
#define FSM_LANE_EXP_MAX_K 20

/* m, s (and t, see log_sum, with want_t) of the FSM_LANES rows at x, then by `what`: the
 * exponentials in row layout at o (FSM_WRITE_EXP, for the CE finishers), the softmax
 * (FSM_WRITE_SOFTMAX), the log_softmax (FSM_WRITE_LOG_SOFTMAX) or the FSM_LANES log-sum-exps
 * (FSM_WRITE_LSE), each with the same arithmetic as the op's row finisher.
 * t: float rows as s - 1 from the double sum down to 2^-20 (as block_exp), double rows as
 * the sum of the terms under 1 plus (the count of 1s - 1): the 1s (the max's own, ties,
 * terms that rounded to 1) never enter the sum that keeps the small terms' digits.  That
 * replaced a compensated (TwoSum) sum here: 65536x10 float64 CE+grad, 2 threads, against
 * the kernels before the near-zero work, 1.14-1.22x -> see block_exp. */
FSM_INLINE void N(lanes_rows)(const T *x, ptrdiff_t K, T *m, T *o, double *s, double *t,
                              int want_t, int what)
{
    T v[FSM_SHORT_K][FSM_LANES], mm[FSM_LANES];
    double hi[FSM_LANES], lo[FSM_LANES]; /* double t: the sum of terms under 1, the 1s */
    const int keep_x = what != FSM_WRITE_EXP && what != FSM_WRITE_SOFTMAX;
#if LANE_GATHER
    const int gather = fsm_x86_level() == 2; /* AVX-512F */
    if (gather)
        N(fsm_lanes_in)(x, K, &v[0][0]);
    else
#endif
        for (ptrdiff_t c = 0; c < K; c++)
#pragma omp simd
            for (ptrdiff_t l = 0; l < FSM_LANES; l++)
                v[c][l] = x[l * K + c];
#pragma omp simd
    for (ptrdiff_t l = 0; l < FSM_LANES; l++) {
        mm[l] = x[l * K]; /* K >= 1: the front never hands a kernel an empty row */
        hi[l] = 0.0;
        lo[l] = 0.0;
    }
    for (ptrdiff_t c = 1; c < K; c++)
#pragma omp simd
        for (ptrdiff_t l = 0; l < FSM_LANES; l++)
            mm[l] = v[c][l] > mm[l] ? v[c][l] : mm[l];
#if LANE_GATHER
    if (gather)
        N(fsm_lanes_exp)(&v[0][0], K, mm, hi, keep_x);
    else
#endif
    for (ptrdiff_t c = 0; c < K; c++) {
        if (want_t && sizeof(T) == sizeof(double)) {
#pragma omp simd
            for (ptrdiff_t l = 0; l < FSM_LANES; l++) {
                T ev = EXP(v[c][l] - mm[l]);
                if (!keep_x)
                    v[c][l] = ev;
                double one = ev >= 1.0 ? 1.0 : 0.0; /* NaN goes into the sum */
                hi[l] += ev - one * ev;
                lo[l] += one;
            }
        } else {
#pragma omp simd
            for (ptrdiff_t l = 0; l < FSM_LANES; l++) {
                T ev = EXP(v[c][l] - mm[l]);
                if (!keep_x)
                    v[c][l] = ev;
                hi[l] += ev;
            }
        }
    }
#pragma omp simd
    for (ptrdiff_t l = 0; l < FSM_LANES; l++) {
        m[l] = mm[l];
        s[l] = hi[l] + lo[l];
        if (want_t && sizeof(T) == sizeof(double))
            t[l] = hi[l] + (lo[l] - 1.0);
        else if (want_t)
            t[l] = (hi[l] - 1.0 >= 0x1p-20) ? hi[l] - 1.0 : -1.0;
        else
            t[l] = -1.0;
    }
    if (what == FSM_WRITE_EXP) {
#if LANE_GATHER
        if (gather) {
            N(fsm_lanes_out)(&v[0][0], K, o);
            return;
        }
#endif
        for (ptrdiff_t c = 0; c < K; c++)
#pragma omp simd
            for (ptrdiff_t l = 0; l < FSM_LANES; l++)
                o[l * K + c] = v[c][l];
    } else if (what == FSM_WRITE_SOFTMAX) {
        T inv[FSM_LANES];
#pragma omp simd
        for (ptrdiff_t l = 0; l < FSM_LANES; l++)
            inv[l] = (T)(1.0 / s[l]);
#if LANE_GATHER
        if (gather) {
            for (ptrdiff_t c = 0; c < K; c++)
#pragma omp simd
                for (ptrdiff_t l = 0; l < FSM_LANES; l++)
                    v[c][l] *= inv[l];
            N(fsm_lanes_out)(&v[0][0], K, o);
            return;
        }
#endif
        for (ptrdiff_t c = 0; c < K; c++)
#pragma omp simd
            for (ptrdiff_t l = 0; l < FSM_LANES; l++)
                o[l * K + c] = v[c][l] * inv[l];
    } else if (what != FSM_WRITE_NONE) {
        T logs[FSM_LANES];
        double L[FSM_LANES];
        if (sizeof(T) == sizeof(float)) {
            /* log_sum's arithmetic as one vector loop, then its careful rows (s < 2
             * without t) one by one.  Float lanes have t >= 0 or s < 2 (or NaN), so u is
             * 1 + t wherever the value is used.  INLINE_LOG here for every K: log_softmax
             * and logsumexp float32 30000x24 measured 0.70-0.82x the time with libm's;
             * a row of 21-31 classes taken one at a time uses libm's (log_sum), so its
             * result may differ from a lane's in the last bit where the double value
             * falls within 1e-15 of a rounding boundary of float (none in 1e8 values) */
#pragma omp simd
            for (ptrdiff_t l = 0; l < FSM_LANES; l++) {
                double tl = t[l], u = tl >= 0.0 ? 1.0 + tl : s[l], w = 2.0 - u;
                double d = tl >= 0.0 ? tl - (u - 1.0) : 0.0;
                L[l] = INLINE_LOG(u) + d * (w > 0.0 ? w : 0.0);
            }
            for (ptrdiff_t l = 0; l < FSM_LANES; l++)
                if (!(t[l] >= 0.0) && s[l] < 2.0)
                    L[l] = N(log1p_rest)(x + l * K, NULL, K, mm[l]);
        } else {
            for (ptrdiff_t l = 0; l < FSM_LANES; l++) /* libm's log, a call per row */
                L[l] = N(log_sum)(x + l * K, NULL, K, mm[l], s[l], t[l]);
        }
        if (what == FSM_WRITE_LSE) {
#pragma omp simd
            for (ptrdiff_t l = 0; l < FSM_LANES; l++)
                o[l] = (T)(mm[l] + L[l]);
            for (ptrdiff_t l = 0; l < FSM_LANES; l++)
                if (!isfinite(mm[l]))
                    o[l] = (T)N(lse_nonfinite)(x + l * K, K, mm[l]);
        }
#pragma omp simd
        for (ptrdiff_t l = 0; l < FSM_LANES; l++)
            logs[l] = (T)L[l];
        if (what == FSM_WRITE_LOG_SOFTMAX) {
#if LANE_GATHER
            if (gather) {
                for (ptrdiff_t c = 0; c < K; c++)
#pragma omp simd
                    for (ptrdiff_t l = 0; l < FSM_LANES; l++)
                        v[c][l] = (v[c][l] - mm[l]) - logs[l];
                N(fsm_lanes_out)(&v[0][0], K, o);
                return;
            }
#endif
            for (ptrdiff_t c = 0; c < K; c++)
#pragma omp simd
                for (ptrdiff_t l = 0; l < FSM_LANES; l++)
                    o[l * K + c] = (v[c][l] - mm[l]) - logs[l];
        }
    }
}

/* m, e = exp(x - m) and s = sum e per row of a block of nb short rows; with want_t (a
 * constant at each use) also t = s - 1 to full relative accuracy (see log_sum).  Whole
 * groups of FSM_LANES rows go through lanes_exp, the rest one row at a time, where the
 * double rows' t comes from an x87 extended sum (or TwoSum where long double is not
 * wider).  A non-finite max makes e, and so s and t, NaN; t = -1 sends a row to log_sum's
 * own careful path. */
FSM_INLINE void N(block_exp)(const T *x, ptrdiff_t nb, ptrdiff_t K, T *m, T *e, double *s,
                             double *t, int want_t)
{
    ptrdiff_t i0 = 0;
    for (; K * (ptrdiff_t)sizeof(T) < FSM_LANE_ROW_BYTES && K <= FSM_LANE_EXP_MAX_K &&
           i0 + FSM_LANES <= nb;
         i0 += FSM_LANES)
        N(lanes_rows)(x + i0 * K, K, m + i0, e + i0 * K, s + i0, t + i0, want_t, FSM_WRITE_EXP);
    /* the rest: shifted row by row, then one exp over the contiguous stretch (a per-row
     * exp loop measured 1.4-2x slower at K = 16-31) */
    for (ptrdiff_t i = i0; i < nb; i++) {
        m[i] = N(row_max)(x + i * K, K);
        for (ptrdiff_t c = 0; c < K; c++)
            e[i * K + c] = x[i * K + c] - m[i];
    }
    ptrdiff_t j1 = nb * K;
#if LANE_GATHER
    if (fsm_x86_level() == 2)
        N(fsm_block_exp_512)(e + i0 * K, j1 - i0 * K);
    else
#endif
#pragma omp simd
    for (ptrdiff_t j = i0 * K; j < j1; j++)
        e[j] = EXP(e[j]);
    if (want_t && sizeof(T) == sizeof(double)) {
        /* double rows' compensated sums across lanes, reading the row-layout exponentials
         * with strided loads: a row's own x87 sum is one latency-bound chain and cost 16%
         * of a double log op at K = 16-31 */
        for (; i0 + FSM_LANES <= nb; i0 += FSM_LANES) {
            const T *eg = e + i0 * K;
            double hi[FSM_LANES], lo[FSM_LANES];
#pragma omp simd
            for (ptrdiff_t l = 0; l < FSM_LANES; l++)
                hi[l] = lo[l] = 0.0;
            for (ptrdiff_t c = 0; c < K; c++)
#pragma omp simd
                for (ptrdiff_t l = 0; l < FSM_LANES; l++) {
                    double v = eg[l * K + c], sum = hi[l] + v, vv = sum - hi[l];
                    lo[l] += (hi[l] - (sum - vv)) + (v - vv);
                    hi[l] = sum;
                }
#pragma omp simd
            for (ptrdiff_t l = 0; l < FSM_LANES; l++) {
                s[i0 + l] = hi[l] + lo[l];
                t[i0 + l] = (hi[l] - 1.0) + lo[l];
            }
        }
    }
    for (ptrdiff_t i = i0; i < nb; i++) {
        T *er = e + i * K;
        if (want_t && sizeof(T) == sizeof(float)) {
            /* float results need t to ~1e-8 relative: the double sum has it to K * 1e-16
             * absolute, so s - 1 (exact) serves down to t = 2^-20; below, the careful sum */
            double acc = 0.0;
            for (ptrdiff_t c = 0; c < K; c++)
                acc += er[c];
            s[i] = acc;
            t[i] = (acc - 1.0 >= 0x1p-20) ? acc - 1.0 : -1.0;
        } else if (want_t) {
#if FSM_X87_SUMS
            /* x87's 64-bit mantissa keeps t to K * 5e-20 absolute: s - 1 serves down to
             * t = 2^-10 (4 ulp of double), below it the careful sum */
            long double acc = 0.0L;
            for (ptrdiff_t c = 0; c < K; c++)
                acc += er[c];
            s[i] = (double)acc;
            t[i] = (acc - 1.0L >= 0x1p-10L) ? (double)(acc - 1.0L) : -1.0;
#else
            double hi = 0.0, lo = 0.0;
            for (ptrdiff_t c = 0; c < K; c++) {
                double v = er[c], sum = hi + v, vv = sum - hi;
                lo += (hi - (sum - vv)) + (v - vv);
                hi = sum;
            }
            t[i] = (hi - 1.0) + lo;
            s[i] = hi + lo;
#endif
        } else {
            double acc = 0.0;
            for (ptrdiff_t c = 0; c < K; c++)
                acc += er[c];
            s[i] = acc;
        }
    }
}

/* Short rows whose op lanes_rows finishes itself: whole lane groups of [r0, r1) there,
 * advancing r0 past them (FSM_FOR_ROWS then takes the few rows left). */
#define FSM_LANE_GROUPS(WHAT, OUT_AT_R0, WANT_T)                                             \
    if (K * (ptrdiff_t)sizeof(T) < FSM_LANE_ROW_BYTES) {                                   \
        T mg[FSM_LANES];                                                                   \
        double sg[FSM_LANES], tg[FSM_LANES];                                               \
        for (; r0 + FSM_LANES <= r1; r0 += FSM_LANES)                                      \
            N(lanes_rows)(x + r0 * K, K, mg, OUT_AT_R0, sg, tg, WANT_T, WHAT);             \
    }

/* Iterate rows [r0, r1): long rows one at a time, short rows in blocks through block_exp.
 * E_BLOCK: where the exponentials go ((rows, K) array or NULL for "nowhere");
 * FIN(ctx, i, xr, er, m, s, t): the op's per-row finish, an inline function; t: s without
 * the max's 1 where WANT_T and the rows are short, else -1 (see log_sum). */
#define FSM_FOR_ROWS(E_BLOCK, FIN, CTX, WANT_T)                                            \
    if (K >= FSM_SHORT_K) {                                                                \
        /* row i + 1's max in row i's exp pass (row_exp_sum_next; FSM_NEXT_MAX_BYTES); out \
         * may be x: row i + 1 is read before anything writes it */                        \
        const int pipe_ = K * (ptrdiff_t)sizeof(T) <= FSM_NEXT_MAX_BYTES;                   \
        T m_next = r0 < r1 ? N(row_max)(x + r0 * K, K) : (T)0;                             \
        for (ptrdiff_t i = r0; i < r1; i++) {                                              \
            const T *xr = x + i * K, *xn = i + 1 < r1 ? xr + K : NULL;                     \
            T *er = (E_BLOCK) ? (E_BLOCK) + i * K : NULL;                                  \
            const T m = m_next;                                                            \
            double s = N(row_exp_sum_next)(xr, er, K, m, pipe_ ? xn : NULL, &m_next);      \
            if (!pipe_ && xn)                                                              \
                m_next = N(row_max)(xn, K);                                                \
            FIN(CTX, i, xr, er, m, s, -1.0);                                               \
        }                                                                                  \
    } else {                                                                               \
        T buf[FSM_BLOCK], mb[FSM_BLOCK];                                                   \
        double sb[FSM_BLOCK], tb[FSM_BLOCK];                                               \
        ptrdiff_t B = FSM_BLOCK / K / FSM_LANES * FSM_LANES;                              \
        for (ptrdiff_t rb = r0; rb < r1; rb += B) {                                        \
            ptrdiff_t nb = (r1 - rb < B) ? r1 - rb : B;                                    \
            T *eb = (E_BLOCK) ? (E_BLOCK) + rb * K : buf;                                  \
            N(block_exp)(x + rb * K, nb, K, mb, eb, sb, tb, WANT_T);                       \
            for (ptrdiff_t j = 0; j < nb; j++)                                             \
                FIN(CTX, rb + j, x + (rb + j) * K, eb + j * K, mb[j], sb[j],              \
                    (WANT_T) ? tb[j] : -1.0);                                              \
        }                                                                                  \
    }

typedef struct {
    T *out;
    ptrdiff_t K;
} N(ew_ctx);

FSM_INLINE void N(fin_softmax)(const N(ew_ctx) *cx, ptrdiff_t i, const T *xr, T *er, T m,
                                  double s, double t)
{
    (void)xr, (void)m, (void)i, (void)t;
    T inv = (T)(1.0 / s);
#pragma omp simd
    for (ptrdiff_t c = 0; c < cx->K; c++)
        er[c] *= inv;
}

FSM_CLONES void N(fsm_softmax)(const T *x, T *out, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K)
{
    /* exp goes straight into out (out may be x: each element is read before written) */
    N(ew_ctx) cx = {out, K};
    FSM_LANE_GROUPS(FSM_WRITE_SOFTMAX, out + r0 * K, 0)
    FSM_FOR_ROWS(out, N(fin_softmax), &cx, 0)
}

FSM_INLINE void N(fin_log_softmax)(const N(ew_ctx) *cx, ptrdiff_t i, const T *xr, T *er,
                                      T m, double s, double t)
{
    /* (x - m) - log s: never x - (m + log s), which loses log s when |m| is huge */
    T logs = (T)N(log_sum)(xr, er, cx->K, m, s, t);
    T *o = cx->out + i * cx->K;
    FSM_MAP_ROW(cx->K, c, o[c] = (xr[c] - m) - logs);
}

/* Long float rows, up to FSM_LANES at a time: each row's max and exp-sum as FSM_FOR_ROWS
 * takes them, then their logs as one vector loop (INLINE_LOG) instead of a libm call on
 * each row's critical path; rows with s < 2 then take log_sum's careful log1p.
 * Measured (float32, 2 threads, interleaved medians, time grouped / row by row):
 * logsumexp 64x128 0.84-0.88, 1000x64 0.83-0.86, 2048x128 0.85-0.88, 16384x256 0.95,
 * 8192x512 1.00, 4096x1000 and 512x32000 1.00-1.01.  log_softmax, whose output pass reads
 * the group's rows again: 64x128 0.87-0.92, 128x64 0.88, but where the rows come from
 * memory or L2 (the c module hands a thread 64k-element chunks) slower: 4096x1000 1.10,
 * 8192x512 1.11, 16384x256 1.14-1.22, 256x128 1.14 (64 KiB chunks).  So log_softmax groups
 * only calls, or a thread's share of one, of up to FSM_GROUP_LOG_MAX_BYTES (32x256 1.02). */
#define FSM_GROUP_LOG_MAX_BYTES (32 * 1024)
FSM_INLINE void N(group_logs)(const T *x, ptrdiff_t nb, ptrdiff_t K, T *mg, double *L)
{
    double sg[FSM_LANES];
    T m_next = N(row_max)(x, K); /* row j + 1's max in row j's exp pass, as FSM_FOR_ROWS */
    for (ptrdiff_t j = 0; j < nb; j++) {
        mg[j] = m_next;
        sg[j] = N(row_exp_sum_next)(x + j * K, NULL, K, mg[j],
                                    j + 1 < nb ? x + (j + 1) * K : NULL, &m_next);
    }
    for (ptrdiff_t j = nb; j < FSM_LANES; j++)
        sg[j] = 2.0;
#pragma omp simd
    for (ptrdiff_t j = 0; j < FSM_LANES; j++)
        L[j] = INLINE_LOG(sg[j]);
    for (ptrdiff_t j = 0; j < nb; j++)
        if (sg[j] < 2.0)
            L[j] = N(log1p_rest)(x + j * K, NULL, K, mg[j]);
}

/* Out of line, as log1p_rest, so the row-by-row path's code stays as it was. */
static FSM_CLONES __attribute__((noinline)) void N(log_softmax_grouped)(const T *x, T *out,
                                                                       ptrdiff_t r0,
                                                                       ptrdiff_t r1, ptrdiff_t K)
{
    /* every row's stats of a group before its output: out may be x */
    for (ptrdiff_t rb = r0; rb < r1; rb += FSM_LANES) {
        ptrdiff_t nb = (r1 - rb < FSM_LANES) ? r1 - rb : FSM_LANES;
        T mg[FSM_LANES];
        double L[FSM_LANES];
        N(group_logs)(x + rb * K, nb, K, mg, L);
        for (ptrdiff_t j = 0; j < nb; j++) {
            const T *xr = x + (rb + j) * K;
            T *o = out + (rb + j) * K;
            const T m = mg[j], logs = (T)L[j];
            FSM_MAP_ROW(K, c, o[c] = (xr[c] - m) - logs);
        }
    }
}

static FSM_CLONES __attribute__((noinline)) void N(logsumexp_grouped)(const T *x, T *out,
                                                                     ptrdiff_t r0, ptrdiff_t r1,
                                                                     ptrdiff_t K)
{
    for (ptrdiff_t rb = r0; rb < r1; rb += FSM_LANES) {
        ptrdiff_t nb = (r1 - rb < FSM_LANES) ? r1 - rb : FSM_LANES;
        T mg[FSM_LANES];
        double L[FSM_LANES];
        N(group_logs)(x + rb * K, nb, K, mg, L);
        for (ptrdiff_t j = 0; j < nb; j++)
            out[rb + j] = isfinite(mg[j]) ? (T)(mg[j] + L[j])
                                          : (T)N(lse_nonfinite)(x + (rb + j) * K, K, mg[j]);
    }
}

FSM_CLONES void N(fsm_log_softmax)(const T *x, T *out, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K)
{
    N(ew_ctx) cx = {out, K};
    T *none = NULL;
    if (sizeof(T) == sizeof(float) && K >= FSM_SHORT_K &&
        (r1 - r0) * K * (ptrdiff_t)sizeof(T) <= FSM_GROUP_LOG_MAX_BYTES) {
        N(log_softmax_grouped)(x, out, r0, r1, K);
        return;
    }
    FSM_LANE_GROUPS(FSM_WRITE_LOG_SOFTMAX, out + r0 * K, 1)
    FSM_FOR_ROWS(none, N(fin_log_softmax), &cx, 1)
}

FSM_INLINE void N(fin_logsumexp)(const N(ew_ctx) *cx, ptrdiff_t i, const T *xr, T *er, T m,
                                    double s, double t)
{
    cx->out[i] = isfinite(m) ? (T)(m + N(log_sum)(xr, er, cx->K, m, s, t))
                             : (T)N(lse_nonfinite)(xr, cx->K, m);
}

FSM_CLONES void N(fsm_logsumexp)(const T *x, T *out, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K)
{
    N(ew_ctx) cx = {out, K};
    T *none = NULL;
    if (sizeof(T) == sizeof(float) && K >= FSM_SHORT_K) {
        N(logsumexp_grouped)(x, out, r0, r1, K);
        return;
    }
    FSM_LANE_GROUPS(FSM_WRITE_LSE, out + r0, 1)
    FSM_FOR_ROWS(none, N(fin_logsumexp), &cx, 1)
}

/* The parts of log-sum-exp, kept apart for combining across chunks of a row (fastsm.dask):
 * m_r = max, L_r = log(sum exp(x - m_r)) (log_sum, so a tiny L keeps its digits); a row
 * with a non-finite max has L = its logsumexp (lse_nonfinite). */
typedef struct {
    double *m, *L;
    ptrdiff_t K;
} N(parts_ctx);

FSM_INLINE void N(fin_lse_parts)(const N(parts_ctx) *cx, ptrdiff_t i, const T *xr, T *er, T m,
                                    double s, double t)
{
    cx->m[i] = m;
    cx->L[i] = isfinite(m) ? N(log_sum)(xr, er, cx->K, m, s, t) : N(lse_nonfinite)(xr, cx->K, m);
}

FSM_CLONES void N(fsm_lse_parts)(const T *x, double *m, double *L, ptrdiff_t r0, ptrdiff_t r1,
                                 ptrdiff_t K)
{
    N(parts_ctx) cx = {m, L, K};
    T *none = NULL;
    if (K * (ptrdiff_t)sizeof(T) < FSM_LANE_ROW_BYTES) {
        T mg[FSM_LANES];
        double sg[FSM_LANES], tg[FSM_LANES];
        for (; r0 + FSM_LANES <= r1; r0 += FSM_LANES) {
            N(lanes_rows)(x + r0 * K, K, mg, NULL, sg, tg, 1, FSM_WRITE_NONE);
            for (ptrdiff_t l = 0; l < FSM_LANES; l++)
                N(fin_lse_parts)(&cx, r0 + l, x + (r0 + l) * K, NULL, mg[l], sg[l], tg[l]);
        }
    }
    FSM_FOR_ROWS(none, N(fin_lse_parts), &cx, 1)
}

/* out = (x - m_r) - L_r, or its exp (log_out == 0), given the parts of each row's lse (in
 * T, as the in-memory kernels: m is one of the row's values); a row whose max is not
 * finite or whose L is NaN is NaN, as softmax/log_softmax give it. */
FSM_CLONES void N(fsm_from_lse_parts)(const T *x, const double *m, const double *L, T *out,
                                      int log_out, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K)
{
    for (ptrdiff_t i = r0; i < r1; i++) {
        const T *xr = x + i * K;
        T *o = out + i * K;
        T mi = (T)m[i], li = (T)L[i];
        if (!isfinite(mi) || li != li) {
            for (ptrdiff_t c = 0; c < K; c++)
                o[c] = (T)NAN;
        } else if (log_out) {
#pragma omp simd
            for (ptrdiff_t c = 0; c < K; c++)
                o[c] = (xr[c] - mi) - li;
        } else {
#pragma omp simd
            for (ptrdiff_t c = 0; c < K; c++)
                o[c] = EXP((xr[c] - mi) - li);
        }
    }
}

typedef struct {
    const void *target; /* int64 (n,) or T (n, K) */
    const double *weight;
    int64_t ignore_index;
    double eps, eps_k, w_sum, scale;
    double *loss;
    T *grad;
    ptrdiff_t K;
    double z_coef;    /* the z-loss term's gradient factor: grad += z_coef * lse * p */
    double *lse;      /* NULL or (n,): each row's log-sum-exp */
    uint8_t *correct; /* NULL or (n,): 1 where the target is the row's first maximum */
} N(ce_ctx);

/* lse of a row from its parts (the same rules as fin_logsumexp, in double) */
FSM_INLINE double N(row_lse)(const T *xr, ptrdiff_t K, T m, double logs)
{
    return isfinite(m) ? (double)m + logs : N(lse_nonfinite)(xr, K, m);
}

/* 1 if class y holds the row's first maximal value and the row holds no NaN (argmax == y,
 * with argmax's first-occurrence rule); s: the row's exp-sum, NaN only for a NaN or an
 * infinite max, the rare rows that need the scan for NaN. */
static uint8_t N(first_max_is)(const T *xr, ptrdiff_t K, T m, double s, int64_t y)
{
    if (!(xr[y] == m))
        return 0;
    int earlier = 0;
    for (ptrdiff_t c = 0; c < y; c++)
        earlier |= xr[c] == m;
    if (earlier)
        return 0;
    if (s != s)
        for (ptrdiff_t c = 0; c < K; c++)
            if (xr[c] != xr[c])
                return 0;
    return 1;
}

/* Cross-entropy.  q_c = (1-eps) w_y [c == y] + eps/K w_c;  loss = sum_c q_c (log s - (x_c - m));
 * grad_c = scale (e_c / s * Q - q_c).  The exponentials land in the gradient row first. */
FSM_INLINE void N(fin_ce_index)(const N(ce_ctx) *cx, ptrdiff_t i, const T *xr, T *er, T m,
                                   double s, double t)
{
    const ptrdiff_t K = cx->K;
    const double *w = cx->weight;
    const double eps = cx->eps, eps_k = cx->eps_k;
    int64_t y = ((const int64_t *)cx->target)[i];
    const int ignored = y == cx->ignore_index;
    if (cx->correct)
        cx->correct[i] = !ignored && N(first_max_is)(xr, K, m, s, y);
    double logs = (!ignored || cx->lse) ? N(log_sum)(xr, er, K, m, s, t) : 0.0;
    if (cx->lse)
        cx->lse[i] = N(row_lse)(xr, K, m, logs);
    if (ignored) {
        cx->loss[i] = 0.0;
        if (cx->grad) {
#pragma omp simd
            for (ptrdiff_t c = 0; c < K; c++)
                er[c] = 0;
        }
        return;
    }
    double wy = w[y];
    /* a zero weight contributes 0 even where x = -inf (0 * log 0 = 0, as ce_soft); 0 * logs
     * keeps a dead row (no usable logit: logs is NaN) NaN */
    double keep_w = (1.0 - eps) * wy;
    double l = keep_w != 0.0 ? keep_w * (logs - ((double)xr[y] - (double)m)) : 0.0 * logs;
    if (eps != 0.0) {
        /* in chunks, like row_exp_sum: over 32k classes one lane sum per vector lane
         * drifted by 5 ulp; differences in double (exact for float input) */
        double wz = 0.0;
        for (ptrdiff_t c0 = 0; c0 < K; c0 += FSM_CHUNK) {
            ptrdiff_t c1 = (K - c0 < FSM_CHUNK) ? K : c0 + FSM_CHUNK;
            double part = 0.0;
#pragma omp simd reduction(+ : part)
            for (ptrdiff_t c = c0; c < c1; c++)
                part += w[c] != 0.0 ? w[c] * ((double)xr[c] - (double)m) : 0.0;
            wz += part;
        }
        l += eps_k * (cx->w_sum * logs - wz);
    }
    cx->loss[i] = l;
    if (cx->grad) {
        double zl = cx->z_coef != 0.0 ? cx->z_coef * ((double)m + logs) : 0.0;
        T a = (T)((cx->scale * ((1.0 - eps) * wy + eps_k * cx->w_sum) + zl) / s);
        if (eps != 0.0) {
            double b = cx->scale * eps_k;
#pragma omp simd
            for (ptrdiff_t c = 0; c < K; c++)
                er[c] = er[c] * a - (T)(b * w[c]);
        } else {
#pragma omp simd
            for (ptrdiff_t c = 0; c < K; c++)
                er[c] *= a;
        }
        er[y] -= (T)(cx->scale * (1.0 - eps) * wy);
    }
}

FSM_CLONES void N(fsm_ce_index)(const T *x, const int64_t *target, const double *weight,
                                int64_t ignore_index, double eps, double scale, double *loss,
                                T *grad, double z_coef, double *lse, uint8_t *correct,
                                ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K)
{
    /* only label smoothing reads w_sum (eps_k w_sum, eps_k = 0 otherwise).  A plain loop,
     * one add's latency per class, in every call of a thread's 2-row chunks, made 256x32000
     * float32 cross_entropy slower on 2 threads than on 1 (0.269 against 0.212 ns an
     * element; the controller then ran it serial); fsm_pairwise_sum is 16 lanes wide */
    const double w_sum = eps != 0.0 ? fsm_pairwise_sum(weight, K) : 0.0;
    N(ce_ctx) cx = {target, weight, ignore_index, eps, eps / (double)K, w_sum, scale, loss,
                    grad, K, z_coef, lse, correct};
    FSM_FOR_ROWS(grad, N(fin_ce_index), &cx, 1)
}

/* q_c = w_c ((1-eps) t_c + eps/K); a q_c of 0 contributes 0 even where x_c = -inf. */
FSM_INLINE void N(fin_ce_soft)(const N(ce_ctx) *cx, ptrdiff_t i, const T *xr, T *er, T m,
                                  double s, double t)
{
    const ptrdiff_t K = cx->K;
    const double *w = cx->weight;
    const double keep = 1.0 - cx->eps, eps_k = cx->eps_k;
    const T *tr = (const T *)cx->target + i * K;
    double qz = 0.0, big_q = 0.0;
    for (ptrdiff_t c0 = 0; c0 < K; c0 += FSM_CHUNK) { /* chunked: see fin_ce_index */
        ptrdiff_t c1 = (K - c0 < FSM_CHUNK) ? K : c0 + FSM_CHUNK;
        double qz_part = 0.0, q_part = 0.0;
#pragma omp simd reduction(+ : qz_part, q_part)
        for (ptrdiff_t c = c0; c < c1; c++) {
            double q = w[c] * (keep * (double)tr[c] + eps_k);
            double z = (double)xr[c] - (double)m;
            qz_part += q != 0.0 ? q * z : 0.0;
            q_part += q;
        }
        qz += qz_part;
        big_q += q_part;
    }
    double logs = N(log_sum)(xr, er, K, m, s, t);
    cx->loss[i] = big_q * logs - qz;
    if (cx->lse)
        cx->lse[i] = N(row_lse)(xr, K, m, logs);
    if (cx->grad) {
        double zl = cx->z_coef != 0.0 ? cx->z_coef * ((double)m + logs) : 0.0;
        T a = (T)((cx->scale * big_q + zl) / s);
        double scale = cx->scale;
#pragma omp simd
        for (ptrdiff_t c = 0; c < K; c++)
            er[c] = er[c] * a - (T)(scale * w[c] * (keep * (double)tr[c] + eps_k));
    }
}

FSM_CLONES void N(fsm_ce_soft)(const T *x, const T *target, const double *weight, double eps,
                               double scale, double *loss, T *grad, double z_coef, double *lse,
                               ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K)
{
    N(ce_ctx) cx = {target, weight, 0, eps, eps / (double)K, 0.0, scale, loss, grad, K,
                    z_coef, lse, NULL};
    FSM_FOR_ROWS(grad, N(fin_ce_soft), &cx, 1)
}

/* ---- Reductions over an axis that is not last ------------------------------------------
 * x is a C-contiguous (R, b) slab reduced over R (axis 0): columns j0..j1 of it, in tiles
 * of FSM_COL_TILE columns whose running max and sums stay in L1 while the passes walk
 * down the rows.  Every loop runs along the contiguous columns, so max, exp and sums are
 * plain vertical vector operations, with no transposed copy of x (the front's tiled
 * transpose of a 1000x512 float32 array alone took 0.37 ms, a third of the call).
 * A column's arithmetic is the row kernels' for the same values: results match them.
 * Float softmax on AVX-512 first tries the pass with no max (fsm_cols_exp_unshifted_512_f32,
 * rowops.c): kernel time 0.81-0.88x the max-pass version at 1000x512 and 2000x1024 along
 * axis 0 (ab_kernels, 1 and 2 threads); a column that leaves its range only in the last
 * row pays both passes, 1.4-1.7x.  Tried and dropped (same runs): tiles of 64 or 128
 * columns (slower on 1 thread: more strided rows), software prefetch of the rows 8 ahead
 * (no change), tiles as wide as the row (1 thread 0.85x, but one task per slab for the
 * threads). */
#define FSM_COL_TILE 256

/* log_sum for a column (stride b), the careful path summing down the column. */
FSM_INLINE double N(col_log_sum)(const T *xc, ptrdiff_t R, ptrdiff_t b, T m, double s,
                                 double t)
{
    if (t >= 0.0) {
        double u = 1.0 + t, w = 2.0 - u;
        return log(u) + (t - (u - 1.0)) * (w > 0.0 ? w : 0.0);
    }
    if (!(s < 2.0))
        return log(s);
    ptrdiff_t j = 0; /* s < 2: finite m, no NaN, so a maximal element exists */
    while (xc[j * b] != m)
        j++;
    double rest = 0.0;
    for (ptrdiff_t r = 0; r < R; r++)
        if (r != j)
            rest += (double)EXP(xc[r * b] - m);
    return log1p(rest);
}

/* what: FSM_WRITE_SOFTMAX, FSM_WRITE_LOG_SOFTMAX or FSM_WRITE_LSE (out: the slab's (b,) row) */
FSM_INLINE void N(cols)(const T *x, T *out, ptrdiff_t R, ptrdiff_t b, ptrdiff_t j0,
                        ptrdiff_t j1, int what)
{
    T m[FSM_COL_TILE];
    double hi[FSM_COL_TILE], lo[FSM_COL_TILE];
    const int careful = what != FSM_WRITE_SOFTMAX && sizeof(T) == sizeof(double);
    for (ptrdiff_t jt = j0; jt < j1; jt += FSM_COL_TILE) {
        const ptrdiff_t w = (j1 - jt < FSM_COL_TILE) ? j1 - jt : FSM_COL_TILE;
        const T *xt = x + jt;
        T *ot = (what == FSM_WRITE_LSE) ? NULL : out + jt;
#pragma omp simd
        for (ptrdiff_t j = 0; j < w; j++) {
            m[j] = xt[j];
            hi[j] = 0.0;
            lo[j] = 0.0;
        }
#if defined(EXP_SUM_512) && FSM_EXP_512
        /* not in place: the unshifted pass writes exp(x) before it knows it may */
        if (what == FSM_WRITE_SOFTMAX && sizeof(T) == sizeof(float) && (const T *)ot != xt &&
            fsm_x86_level() == 2) {
            if (fsm_cols_exp_unshifted_512_f32((const float *)xt, (float *)ot, R, b, w, hi))
                goto scale;
#pragma omp simd
            for (ptrdiff_t j = 0; j < w; j++)
                hi[j] = 0.0;
        }
#endif
        for (ptrdiff_t r = 1; r < R; r++) {
            const T *xr = xt + r * b;
#pragma omp simd
            for (ptrdiff_t j = 0; j < w; j++)
                m[j] = xr[j] > m[j] ? xr[j] : m[j];
        }
        for (ptrdiff_t r = 0; r < R; r++) {
            const T *xr = xt + r * b;
            if (what == FSM_WRITE_SOFTMAX) {
                T *orow = ot + r * b;
#pragma omp simd
                for (ptrdiff_t j = 0; j < w; j++) {
                    T e = EXP(xr[j] - m[j]);
                    orow[j] = e;
                    hi[j] += e;
                }
            } else if (careful) { /* double: compensated, t = (hi - 1) + lo (see lanes_rows) */
#if defined(EXP_SUM_512) && FSM_EXP_512
                if (sizeof(T) == sizeof(double) && fsm_x86_level() == 2) {
                    fsm_cols_exp_twosum_512_f64((const double *)xr, (const double *)m, hi,
                                                lo, w);
                    continue;
                }
#endif
#pragma omp simd
                for (ptrdiff_t j = 0; j < w; j++) {
                    double e = EXP(xr[j] - m[j]), sum = hi[j] + e, vv = sum - hi[j];
                    lo[j] += (hi[j] - (sum - vv)) + (e - vv);
                    hi[j] = sum;
                }
            } else {
#pragma omp simd
                for (ptrdiff_t j = 0; j < w; j++)
                    hi[j] += EXP(xr[j] - m[j]);
            }
        }
    scale:
        if (what == FSM_WRITE_SOFTMAX) {
            T inv[FSM_COL_TILE];
#pragma omp simd
            for (ptrdiff_t j = 0; j < w; j++)
                inv[j] = (T)(1.0 / hi[j]);
            for (ptrdiff_t r = 0; r < R; r++) {
                T *orow = ot + r * b;
#pragma omp simd
                for (ptrdiff_t j = 0; j < w; j++)
                    orow[j] *= inv[j];
            }
            continue;
        }
        T logs[FSM_COL_TILE];
        for (ptrdiff_t j = 0; j < w; j++) { /* one log per column, scalar */
            double s = hi[j] + lo[j], t;
            if (careful)
                t = (hi[j] - 1.0) + lo[j];
            else /* float: s - 1 from the double sum down to 2^-20 (see block_exp) */
                t = (s - 1.0 >= 0x1p-20) ? s - 1.0 : -1.0;
            if (what == FSM_WRITE_LSE) {
                T mj = m[j];
                if (isfinite(mj)) {
                    out[jt + j] = (T)(mj + N(col_log_sum)(xt + j, R, b, mj, s, t));
                } else { /* NaN if the column holds one, else its infinite max */
                    T v = mj;
                    for (ptrdiff_t r = 0; r < R; r++)
                        if (xt[r * b + j] != xt[r * b + j]) {
                            v = xt[r * b + j];
                            break;
                        }
                    out[jt + j] = v;
                }
            } else {
                logs[j] = (T)N(col_log_sum)(xt + j, R, b, m[j], s, t);
            }
        }
        if (what == FSM_WRITE_LOG_SOFTMAX)
            for (ptrdiff_t r = 0; r < R; r++) {
                const T *xr = xt + r * b;
                T *orow = ot + r * b;
#pragma omp simd
                for (ptrdiff_t j = 0; j < w; j++)
                    orow[j] = (xr[j] - m[j]) - logs[j];
            }
    }
}

FSM_CLONES void N(fsm_softmax_cols)(const T *x, T *out, ptrdiff_t R, ptrdiff_t b, ptrdiff_t j0,
                                    ptrdiff_t j1)
{
    N(cols)(x, out, R, b, j0, j1, FSM_WRITE_SOFTMAX);
}

FSM_CLONES void N(fsm_log_softmax_cols)(const T *x, T *out, ptrdiff_t R, ptrdiff_t b,
                                        ptrdiff_t j0, ptrdiff_t j1)
{
    N(cols)(x, out, R, b, j0, j1, FSM_WRITE_LOG_SOFTMAX);
}

FSM_CLONES void N(fsm_logsumexp_cols)(const T *x, T *out, ptrdiff_t R, ptrdiff_t b,
                                      ptrdiff_t j0, ptrdiff_t j1)
{
    N(cols)(x, out, R, b, j0, j1, FSM_WRITE_LSE);
}

#undef N
#undef FSM_FOR_ROWS
#undef FSM_LANE_GROUPS
#undef FSM_BLOCK
#undef FSM_SHORT_K
#undef FSM_LANES
#undef FSM_LANE_ROW_BYTES
#undef FSM_LANE_EXP_MAX_K
#undef FSM_COL_TILE
