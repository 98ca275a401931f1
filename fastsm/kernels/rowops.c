/* Row kernels of the c backend.
 *
 * Design
 * - Three passes per row (max; exp stored in the output and summed; scale), the usual CPU
 *   form: the exponentials are computed once and kept.  A single-pass "online" softmax
 *   re-scales the running sum and measured slower on CPU (PERF-NOTES.md).
 * - exp is our own, branch-free and inlined: Cody-Waite range reduction x = n ln2 + r,
 *   a Taylor polynomial of e^r on |r| <= ln2/2 (degree 7 for float: error 5e-9; degree 13
 *   for double: 4e-18), and 2^n built from exponent bits in two halves so results down to
 *   the subnormal range come out right (on AVX-512 one vscalef does it: FSM_EXP_512).  It
 *   keeps NaN (the clamp below returns x for NaN) and sends -inf and anything under the
 *   underflow threshold to +0.  libm's expf is
 *   scalar (~2 GB/s here); libmvec needs -ffast-math, whose -ffinite-math-only may delete
 *   the -inf/NaN handling masks need.  We compile with -fno-trapping-math instead, which
 *   only lets gcc if-convert the clamp (no effect on NaN/inf results), and
 *   `#pragma omp simd reduction` for the vector sums, so no fast-math is needed.
 * - Sums accumulate in double, also for float input (200k-class rows keep 3e-6).
 * - Near zero (rowops_impl.h, log_sum): a row whose exp-sum s is below 2 has its log term
 *   taken as log1p of the sum without the max's own 1, so lse([0, -40]) is 4.2e-18, not 0.
 *   Long rows sum again for such rows only (rare with many classes); short rows get the
 *   small part from the block's own sum: float rows as s - 1 (exact in the double sum down
 *   to 2^-20), double rows from a compensated (TwoSum) sum across 16-row lanes, or an x87
 *   extended sum for rows taken one at a time.
 * - Rows shorter than FSM_SHORT_K go across rows: 16 rows at a time are transposed so
 *   that each vector lane holds one row and the max, exp, sums and (softmax, log_softmax,
 *   logsumexp) the finish are vertical vector operations (rowops_impl.h, lanes_rows).
 *   65536x10, 2 threads, against the row-at-a-time code before the log1p work: softmax
 *   float32 0.45x the time, float64 0.58x, logsumexp 0.48x / 0.64x, log_softmax
 *   0.56x / 0.82x, CE+grad float32 0.69x; CE+grad float64 stays row by row (1.10x: its
 *   compensated sum; lanes measured slower for it, see FSM_LANE_ROW_BYTES).
 * - Portable binaries with fast code: on x86-64 Linux with gcc every kernel is built three
 *   times (AVX-512, AVX2+FMA, baseline SSE2) and the loader picks one (target_clones /
 *   ifunc).  Elsewhere one baseline build is made.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rowops.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(FSM_NO_CLONES)
#define FSM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define FSM_HAVE_CLONES 1
#else
#define FSM_CLONES
#define FSM_HAVE_CLONES 0
#endif

/* Every helper is forced inline: only the exported kernels are cloned per instruction set,
 * so a helper gcc chose to leave out of line ran baseline SSE2 code inside the AVX-512
 * clone (seen: row_exp_sum_f64 out of line after the finishers grew, CE+grad float64
 * 4096x1000 4.9 -> 17 ms). */
#if defined(__GNUC__)
#define FSM_INLINE static inline __attribute__((always_inline))
#else
#define FSM_INLINE static inline
#endif

/* Short double rows sum in x87 extended precision where long double is that (see
 * block_exp); elsewhere a compensated double sum does the same job, slower. */
#include <float.h>
#if defined(__x86_64__) && LDBL_MANT_DIG >= 64 && !defined(FSM_NO_X87)
#define FSM_X87_SUMS 1
#else
#define FSM_X87_SUMS 0
#endif

FSM_INLINE float fsm_expf(float x)
{
    /* Clamped at -176 (maxps semantics: NaN stays NaN), where n = -254 makes both
     * halves of 2^n, s1 and s2, +0: the result is +0 with no underflow.  Clamped at -104,
     * as before, p s1 s2 underflowed, and an underflowing (or subnormal) product costs the
     * CPU a microcode assist, ~100+ cycles a lane: -inf masks and large negative logits all
     * land here, and softmax of 4096x1000 float32 rows half -inf took 19 ms against 2 ms
     * unmasked (torch 3.5 ms), 1 thread.  Between -176 and -104 the product still
     * underflows (to +0, as before); FSM_EXPF_512 gives +0 below -104 by masks. */
    x = (-176.0f > x) ? -176.0f : x;
    float t = x * 1.44269504088896341f + 12582912.0f; /* 1.5 * 2^23: round to integer */
    float n = t - 12582912.0f;
    int32_t ti;
    memcpy(&ti, &t, sizeof ti);
    int32_t ni = ti - 0x4b400000;
    float r = x - n * 0.693145751953125f; /* ln2 high part: n * it is exact */
    r = r - n * 1.428606765330187045e-06f;
    /* Taylor to degree 7 in Estrin's form: 3 dependent steps after r^2 where Horner's
     * form took 8, so the rows' exp loops wait less on one vector's chain */
    float r2 = r * r;
    float a0 = r + 1.0f, a1 = r * (1.0f / 6.0f) + 0.5f;
    float a2 = r * (1.0f / 120.0f) + 1.0f / 24.0f, a3 = r * (1.0f / 5040.0f) + 1.0f / 720.0f;
    float p = (a1 * r2 + a0) + (a3 * r2 + a2) * (r2 * r2);
    int32_t n1 = ni >> 1, n2 = ni - n1; /* 2^n = 2^n1 * 2^n2, each a normal number */
    uint32_t b1 = (uint32_t)(n1 + 127) << 23, b2 = (uint32_t)(n2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    return p * s1 * s2;
}

FSM_INLINE double fsm_exp(double x)
{
    x = (-1418.0 > x) ? -1418.0 : x; /* n = -2046: s1 = s2 = +0 (see fsm_expf) */
    double t = x * 1.4426950408889634074 + 6755399441055744.0; /* 1.5 * 2^52 */
    double n = t - 6755399441055744.0;
    int64_t ti;
    memcpy(&ti, &t, sizeof ti);
    int64_t ni = ti - 0x4338000000000000LL;
    double r = x - n * 6.93147180369123816490e-01; /* fdlibm's ln2 split */
    r = r - n * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0; /* 1/13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t n1 = ni >> 1, n2 = ni - n1;
    uint64_t b1 = (uint64_t)(n1 + 1023) << 52, b2 = (uint64_t)(n2 + 1023) << 52;
    double s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    return p * s1 * s2;
}

/* The exp of the float32 kernels built once more for 16-bit results (suffix h32, below): a
 * degree-4 polynomial fitted to e^r on |r| <= ln2/2 (relative error 5.4e-6, against the
 * half types' rounding step of 2^-11 (float16) and 2^-8 (bfloat16)), three multiply-adds
 * fewer per element than fsm_expf, whose degree 7 serves float32 results.  Range, NaN,
 * -inf and subnormal handling as fsm_expf.  softmax, log_softmax and logsumexp only: the
 * cross-entropy's gradient p Q - q cancels where p is near q (label smoothing), and there
 * 5e-6 of p was 1.3 bfloat16 ulp of the result; its half path keeps the float32 kernels. */
FSM_INLINE float fsm_expf_short(float x)
{
    x = (-176.0f > x) ? -176.0f : x;
    float t = x * 1.44269504088896341f + 12582912.0f;
    float n = t - 12582912.0f;
    int32_t ti;
    memcpy(&ti, &t, sizeof ti);
    int32_t ni = ti - 0x4b400000;
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187045e-06f;
    float p = 0.04127765819430351f;
    p = p * r + 0.16753531992435455f;
    p = p * r + 0.5000512003898621f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t n1 = ni >> 1, n2 = ni - n1;
    uint32_t b1 = (uint32_t)(n1 + 127) << 23, b2 = (uint32_t)(n2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    return p * s1 * s2;
}

/* log(s), s >= 1 (or inf, or NaN), in double, for the float kernels: short rows' log(1 + t)
 * (log_sum) and the grouped long rows' log s (group_logs).  Our own and inline, so that 16
 * rows' logs are one vector loop and the short-row finishers make no call (glibc's log, a
 * call per row, was a third of a 65536x10 float32 log_softmax).  s = 2^e f with f in
 * [sqrt(1/2), sqrt 2), log s = e ln2 + 2 atanh(z), z = (f - 1) / (f + 1), |z| < 0.172: the
 * odd series to z^17 leaves 1e-15 of the result, and near s = 1 (f - 1 exact) the result
 * keeps that relative accuracy however small it is, as log_sum's log1p needs.  Float
 * results need 6e-8; double rows keep libm's log. */
FSM_INLINE double fsm_log_for_float(double s)
{
    uint64_t b;
    memcpy(&b, &s, sizeof b);
    int64_t e = (int64_t)(b - 0x3fe6a09e667f3bcdULL) >> 52; /* the bits of sqrt(1/2) */
    uint64_t fb = b - ((uint64_t)e << 52);
    double f;
    memcpy(&f, &fb, sizeof f);
    double z = (f - 1.0) / (f + 1.0), z2 = z * z;
    double p = 1.0 / 17;
    p = p * z2 + 1.0 / 15;
    p = p * z2 + 1.0 / 13;
    p = p * z2 + 1.0 / 11;
    p = p * z2 + 1.0 / 9;
    p = p * z2 + 1.0 / 7;
    p = p * z2 + 1.0 / 5;
    p = p * z2 + 1.0 / 3;
    double r = (double)e * 0.69314718055994530942 + (2.0 * z + (2.0 * z * z2) * p);
    return s < INFINITY ? r : s; /* inf stays inf, NaN NaN */
}

/* What rowops_impl.h's lanes_rows and cols write (a constant at each use). */
enum { FSM_WRITE_EXP, FSM_WRITE_SOFTMAX, FSM_WRITE_LOG_SOFTMAX, FSM_WRITE_LSE, FSM_WRITE_NONE };

/* What the CPU runs beyond the clones' own dispatch, for the hand-written helpers (lane
 * gathers, float16 conversions, AVX-512 exp loops): 2: AVX-512F, 1: AVX + F16C, 0: neither.  libgcc's check
 * includes the OS's (xgetbv).  Set once; a racing first call writes the same. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FSM_NO_CLONES)
#include <immintrin.h>
#define FSM_X86_PROBE 1
static int fsm_x86_level(void)
{
    static volatile int level = -1;
    if (level < 0) {
        __builtin_cpu_init();
        level = __builtin_cpu_supports("avx512f") ? 2
                : (__builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c")) ? 1 : 0;
    }
    return level;
}
#else
#define FSM_X86_PROBE 0
#endif

/* lanes_rows (rowops_impl.h) moves 16 short rows into vector lanes, v[c][l] = x[l K + c],
 * and its results back.  gcc 12 builds both transpositions from scalar loads, inserts and
 * extracts (softmax_f32's AVX-512 clone: 248 vmovss/vinsertps), and they were most of a
 * 65536x10 call.  On AVX-512 one vgatherdps (vscatterdps) moves a column of 16 float lanes
 * instead.  The helpers carry their own target, since the clones share one source, and
 * run where the CPU has AVX-512F (fsm_x86_level, read once per 16 rows).  Double rows
 * keep the inserts: two vgatherdpd a column measured 1.00-1.05x their time (2 threads,
 * 65536x10, 40000x4, 30000x24, every op).  Measured for float in the notes of lanes_rows. */
#if FSM_HAVE_CLONES
#define FSM_FLOAT_LANE_GATHER 1

static __attribute__((target("avx512f"))) __m512i fsm_lane_offsets(ptrdiff_t K)
{
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
                                                 14, 15),
                              _mm512_set1_epi32((int)K));
}

/* v (K x 16) <- the 16 rows of K at x; out (16 rows of K) <- v.  16 K < 2^31: short rows. */
static __attribute__((target("avx512f"))) void fsm_lanes_in_f32(const float *x, ptrdiff_t K,
                                                                float *v)
{
    const __m512i at = fsm_lane_offsets(K);
    for (ptrdiff_t c = 0; c < K; c++)
        _mm512_storeu_ps(v + c * 16, _mm512_i32gather_ps(at, x + c, 4));
}

static __attribute__((target("avx512f"))) void fsm_lanes_out_f32(const float *v, ptrdiff_t K,
                                                                 float *out)
{
    const __m512i at = fsm_lane_offsets(K);
    for (ptrdiff_t c = 0; c < K; c++)
        _mm512_i32scatter_ps(out + c, at, _mm512_loadu_ps(v + c * 16), 4);
}

#define fsm_lanes_in_h32 fsm_lanes_in_f32
#define fsm_lanes_out_h32 fsm_lanes_out_f32
#else
#define FSM_FLOAT_LANE_GATHER 0
#endif

/* Long float rows' exp-and-sum on AVX-512 (rowops_impl.h's row_exp_sum calls it where
 * fsm_x86_level() says AVX-512F).  fsm_expf's own steps, in the same order (so every
 * exponential has the same bits: tests/test_exp_simd.py), but 2^n p as
 * one vscalefps, which also rounds subnormal results once, as p s1 s2 does.  gcc 12 cannot
 * emit vscalefps from C (ldexpf stays a scalar vscalefss even under -ffast-math), so the
 * AVX-512 clone built 2^n from the integer bits: 9 of 25 vector instructions per 16
 * elements (objdump of log_softmax_grouped_f32.arch_x86_64_v4), now 1 of 17.
 * Measured (C, 1 thread, 64 rows of 128 float32, exp-sum only, best of 200): gcc's loop
 * 3.10 us, this 1.94 us.  Sums: float lanes per FSM_CHUNK elements, then double, as
 * row_exp_sum (the lanes are added in another order: the sums differ in the last bits). */
#define FSM_CHUNK 1024
#if FSM_HAVE_CLONES
#define FSM_EXP_512 1
#define FSM_EXPF_512(NAME, POLY)                                                          \
    static __attribute__((target("avx512f"), always_inline)) inline __m512 NAME(__m512 x)   \
    {                                                                                      \
        /* lanes below -104 (+0, given: see fsm_expf) leave the arithmetic at r, by masks \
         * that cost nothing (kernels 0.96-1.04x their time before, ab_kernels, 2         \
         * threads; a compare and a masked move of x instead cost them 1.02-1.07x).       \
         * fsm_expf's clamp at -176 does not serve here: vscalefps by 2^-254 underflows   \
         * to +0 with the assist all the same (probe: 55 ns a vector against 1 ns) */     \
        const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-104.0f), _CMP_NLT_UQ); \
        const __m512 magic = _mm512_set1_ps(12582912.0f);                                 \
        __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f),  \
                                                 magic), magic);                           \
        __m512 r = _mm512_maskz_fnmadd_ps(keep, n, _mm512_set1_ps(0.693145751953125f), x); \
        r = _mm512_maskz_fnmadd_ps(keep, n, _mm512_set1_ps(1.428606765330187045e-06f), r); \
        __m512 p;                                                                          \
        POLY                                                                               \
        return _mm512_maskz_scalef_ps(keep, p, n);                                         \
    }
/* fsm_expf's degree-7 Taylor in Estrin's form */
FSM_EXPF_512(fsm_expf_512, {
    __m512 r2 = _mm512_mul_ps(r, r);
    __m512 a0 = _mm512_add_ps(r, _mm512_set1_ps(1.0f));
    __m512 a1 = _mm512_fmadd_ps(r, _mm512_set1_ps(1.0f / 6.0f), _mm512_set1_ps(0.5f));
    __m512 a2 = _mm512_fmadd_ps(r, _mm512_set1_ps(1.0f / 120.0f), _mm512_set1_ps(1.0f / 24.0f));
    __m512 a3 = _mm512_fmadd_ps(r, _mm512_set1_ps(1.0f / 5040.0f),
                                _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(_mm512_fmadd_ps(a3, r2, a2), _mm512_mul_ps(r2, r2),
                        _mm512_fmadd_ps(a1, r2, a0));
})

/* sum_c exp(x_c - m) in double; the exponentials also to e unless e is NULL; and unless xn
 * is NULL, the max of the next row xn (also K long) to *mn: its loads are that row's
 * prefetch, and its exp pass need not wait on a max pass of its own (FSM_FOR_ROWS).  The
 * row after xn is prefetched to L2 (a hint: past the array's end it reads nothing) */
#define FSM_EXP_SUM_512(NAME, EXPV)                                                        \
    static __attribute__((target("avx512f"), noinline)) double NAME(                       \
        const float *x, float *e, ptrdiff_t K, float m, const float *xn, float *mn)        \
    {                                                                                      \
        const __m512 mv = _mm512_set1_ps(m);                                               \
        __m512 mo = _mm512_set1_ps(-INFINITY);                                             \
        double s = 0.0;                                                                    \
        for (ptrdiff_t c0 = 0; c0 < K; c0 += FSM_CHUNK) {                                  \
            ptrdiff_t c1 = (K - c0 < FSM_CHUNK) ? K : c0 + FSM_CHUNK, c = c0;              \
            __m512 part = _mm512_setzero_ps();                                             \
            for (; c + 16 <= c1; c += 16) {                                                \
                if (xn) {                                                                  \
                    mo = _mm512_max_ps(mo, _mm512_loadu_ps(xn + c));                       \
                    _mm_prefetch((const char *)(xn + K + c), _MM_HINT_T1);                 \
                }                                                                          \
                __m512 v = EXPV(_mm512_sub_ps(_mm512_loadu_ps(x + c), mv));                \
                if (e)                                                                     \
                    _mm512_storeu_ps(e + c, v);                                            \
                part = _mm512_add_ps(part, v);                                             \
            }                                                                              \
            if (c < c1) { /* masked lanes are neither read nor written */                  \
                __mmask16 k = (__mmask16)((1u << (c1 - c)) - 1u);                          \
                if (xn)                                                                    \
                    mo = _mm512_mask_max_ps(mo, k, mo, _mm512_maskz_loadu_ps(k, xn + c));  \
                __m512 v = EXPV(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + c), mv));       \
                if (e)                                                                     \
                    _mm512_mask_storeu_ps(e + c, k, v);                                    \
                part = _mm512_mask_add_ps(part, k, part, v);                               \
            }                                                                              \
            s += (double)_mm512_reduce_add_ps(part);                                       \
        }                                                                                  \
        if (xn)                                                                            \
            *mn = _mm512_reduce_max_ps(mo);                                                \
        return s;                                                                          \
    }
FSM_EXP_SUM_512(fsm_exp_sum_512_f32, fsm_expf_512)

/* lanes_rows' exp pass over its 16 float lanes (rowops_impl.h): v[c][l] = exp(v[c][l] -
 * mm[l]) unless keep_x, hi[l] += it in double, column after column: each lane's sum in the
 * row code's order, so lanes and rows keep the same bits.  e[j] = exp(e[j]) over a stretch
 * of n: block_exp's rows left over from the lanes. */
#define FSM_LANES_EXP_512(LANES_NAME, BLOCK_NAME, EXPV)                                   \
    static __attribute__((target("avx512f"), noinline)) void LANES_NAME(                   \
        float *v, ptrdiff_t K, const float *mm, double *hi, int keep_x)                    \
    {                                                                                      \
        const __m512 mv = _mm512_loadu_ps(mm);                                             \
        __m512d h0 = _mm512_loadu_pd(hi), h1 = _mm512_loadu_pd(hi + 8);                    \
        for (ptrdiff_t c = 0; c < K; c++) {                                                \
            __m512 ev = EXPV(_mm512_sub_ps(_mm512_loadu_ps(v + c * 16), mv));              \
            if (!keep_x)                                                                   \
                _mm512_storeu_ps(v + c * 16, ev);                                          \
            h0 = _mm512_add_pd(h0, _mm512_cvtps_pd(_mm512_castps512_ps256(ev)));           \
            h1 = _mm512_add_pd(h1, _mm512_cvtps_pd(_mm256_castpd_ps(                       \
                                       _mm512_extractf64x4_pd(_mm512_castps_pd(ev), 1))));  \
        }                                                                                  \
        _mm512_storeu_pd(hi, h0);                                                          \
        _mm512_storeu_pd(hi + 8, h1);                                                      \
    }                                                                                      \
    static __attribute__((target("avx512f"), noinline)) void BLOCK_NAME(float *e,          \
                                                                        ptrdiff_t n)       \
    {                                                                                      \
        ptrdiff_t j = 0;                                                                   \
        for (; j + 16 <= n; j += 16)                                                       \
            _mm512_storeu_ps(e + j, EXPV(_mm512_loadu_ps(e + j)));                         \
        if (j < n) {                                                                       \
            __mmask16 k = (__mmask16)((1u << (n - j)) - 1u);                               \
            _mm512_mask_storeu_ps(e + j, k, EXPV(_mm512_maskz_loadu_ps(k, e + j)));        \
        }                                                                                  \
    }
FSM_LANES_EXP_512(fsm_lanes_exp_f32, fsm_block_exp_512_f32, fsm_expf_512)

/* fsm_expf_short's degree-4 fit (the h32 kernels: 16-bit results) */
FSM_EXPF_512(fsm_expf_short_512, {
    p = _mm512_fmadd_ps(_mm512_set1_ps(0.04127765819430351f), r,
                        _mm512_set1_ps(0.16753531992435455f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5000512003898621f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
})
FSM_EXP_SUM_512(fsm_exp_sum_512_h32, fsm_expf_short_512)
FSM_LANES_EXP_512(fsm_lanes_exp_h32, fsm_block_exp_512_h32, fsm_expf_short_512)

/* fsm_exp's steps for 8 doubles, 2^n p as one vscalefpd */
static __attribute__((target("avx512f"), always_inline)) inline __m512d fsm_exp_512(__m512d x)
{
    /* below -746: +0 by the masks, as FSM_EXPF_512 */
    const __mmask8 keep = _mm512_cmp_pd_mask(x, _mm512_set1_pd(-746.0), _CMP_NLT_UQ);
    const __m512d magic = _mm512_set1_pd(6755399441055744.0);
    __m512d n = _mm512_sub_pd(_mm512_fmadd_pd(x, _mm512_set1_pd(1.4426950408889634074), magic),
                              magic);
    __m512d r = _mm512_maskz_fnmadd_pd(keep, n, _mm512_set1_pd(6.93147180369123816490e-01), x);
    r = _mm512_maskz_fnmadd_pd(keep, n, _mm512_set1_pd(1.90821492927058770002e-10), r);
    static const double inv_fact[] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0,
                                      1.0 / 3628800.0,    1.0 / 362880.0,    1.0 / 40320.0,
                                      1.0 / 5040.0,       1.0 / 720.0,       1.0 / 120.0,
                                      1.0 / 24.0,         1.0 / 6.0,         0.5,
                                      1.0,                1.0};
    __m512d p = _mm512_set1_pd(inv_fact[0]);
    for (int i = 1; i < 14; i++)
        p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(inv_fact[i]));
    return _mm512_maskz_scalef_pd(keep, p, n);
}

static __attribute__((target("avx512f"), noinline)) double fsm_exp_sum_512_f64(
    const double *x, double *e, ptrdiff_t K, double m, const double *xn, double *mn)
{
    /* xn, mn: the next row's max, as FSM_EXP_SUM_512 */
    /* in FSM_CHUNK-element chunks, as row_exp_sum: one running lane sum over a whole row
     * of 16k doubles (2000 terms a lane) cost log_softmax 11 ulp (the fuzz tests caught it) */
    const __m512d mv = _mm512_set1_pd(m);
    __m512d mo = _mm512_set1_pd(-INFINITY);
    double s = 0.0;
    for (ptrdiff_t c0 = 0; c0 < K; c0 += FSM_CHUNK) {
        ptrdiff_t c1 = (K - c0 < FSM_CHUNK) ? K : c0 + FSM_CHUNK, c = c0;
        __m512d part = _mm512_setzero_pd();
        for (; c + 8 <= c1; c += 8) {
            if (xn) {
                mo = _mm512_max_pd(mo, _mm512_loadu_pd(xn + c));
                _mm_prefetch((const char *)(xn + K + c), _MM_HINT_T1);
            }
            __m512d v = fsm_exp_512(_mm512_sub_pd(_mm512_loadu_pd(x + c), mv));
            if (e)
                _mm512_storeu_pd(e + c, v);
            part = _mm512_add_pd(part, v);
        }
        if (c < c1) {
            __mmask8 k = (__mmask8)((1u << (c1 - c)) - 1u);
            if (xn)
                mo = _mm512_mask_max_pd(mo, k, mo, _mm512_maskz_loadu_pd(k, xn + c));
            __m512d v = fsm_exp_512(_mm512_sub_pd(_mm512_maskz_loadu_pd(k, x + c), mv));
            if (e)
                _mm512_mask_storeu_pd(e + c, k, v);
            part = _mm512_mask_add_pd(part, k, part, v);
        }
        s += _mm512_reduce_add_pd(part);
    }
    if (xn)
        *mn = _mm512_reduce_max_pd(mo);
    return s;
}

/* The column kernels' compensated pass (rowops_impl.h, cols: double log ops along a
 * non-last axis) for one row of w columns: e = exp(xr[j] - m[j]) into the running TwoSum
 * hi[j], lo[j], each column's sum in the same order as the portable loop.  e is rounded
 * before the sum, as TwoSum assumes (in the portable loop gcc may fuse exp's last multiply
 * into the add: the error terms then differ in their last bits). */
static __attribute__((target("avx512f"), noinline)) void fsm_cols_exp_twosum_512_f64(
    const double *xr, const double *m, double *hi, double *lo, ptrdiff_t w)
{
    for (ptrdiff_t j = 0; j < w; j += 8) {
        __mmask8 k = w - j >= 8 ? (__mmask8)0xff : (__mmask8)((1u << (w - j)) - 1u);
        __m512d h = _mm512_maskz_loadu_pd(k, hi + j);
        __m512d e = fsm_exp_512(_mm512_sub_pd(_mm512_maskz_loadu_pd(k, xr + j),
                                              _mm512_maskz_loadu_pd(k, m + j)));
        __m512d sum = _mm512_add_pd(h, e), vv = _mm512_sub_pd(sum, h);
        __m512d err = _mm512_add_pd(_mm512_sub_pd(h, _mm512_sub_pd(sum, vv)),
                                    _mm512_sub_pd(e, vv));
        _mm512_mask_storeu_pd(lo + j, k, _mm512_add_pd(_mm512_maskz_loadu_pd(k, lo + j), err));
        _mm512_mask_storeu_pd(hi + j, k, sum);
    }
}

/* The float column softmax's first pass without a max (rowops_impl.h, cols): for the R
 * rows of a tile of w columns, out = exp(x) and hi[j] += it in double, while every x lies
 * in [-FSM_COL_UNSHIFTED, FSM_COL_UNSHIFTED] or is -inf.  There exp(x), its column sum and
 * that sum's reciprocal are normal floats, so exp(x) / sum exp(x) takes the roundings
 * exp(x - m) / sum exp(x - m) takes, and the max pass, the one read of x from memory
 * that had no arithmetic to hide it behind, is gone.  Returns 0 at the first row with an
 * x outside (NaN, +-inf or a wide column): the caller then runs the shifted passes, which
 * rewrite out and hi.  Measured: see cols. */
#define FSM_COL_UNSHIFTED 40.0f
static __attribute__((target("avx512f"), noinline)) int fsm_cols_exp_unshifted_512_f32(
    const float *x, float *out, ptrdiff_t R, ptrdiff_t b, ptrdiff_t w, double *hi)
{
    const __m512 top = _mm512_set1_ps(FSM_COL_UNSHIFTED);
    const __m512 bottom = _mm512_set1_ps(-FSM_COL_UNSHIFTED);
    const __m512 minus_inf = _mm512_set1_ps(-INFINITY);
    for (ptrdiff_t r = 0; r < R; r++) {
        const float *xr = x + r * b;
        float *er = out + r * b;
        __mmask16 bad = 0;
        for (ptrdiff_t j = 0; j < w; j += 16) {
            __mmask16 k = w - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (w - j)) - 1u);
            __m512 v = _mm512_maskz_loadu_ps(k, xr + j);
            /* outside: v > top or NaN, or v < bottom unless -inf */
            __mmask16 not_minus_inf = _mm512_cmp_ps_mask(v, minus_inf, _CMP_NEQ_OQ);
            bad |= _mm512_mask_cmp_ps_mask(k, v, top, _CMP_NLE_UQ) |
                   (_mm512_mask_cmp_ps_mask(k, v, bottom, _CMP_LT_OQ) & not_minus_inf);
            __m512 e = fsm_expf_512(v);
            _mm512_mask_storeu_ps(er + j, k, e);
            __mmask8 k0 = (__mmask8)k, k1 = (__mmask8)(k >> 8);
            __m512d e0 = _mm512_cvtps_pd(_mm512_castps512_ps256(e));
            __m512d e1 = _mm512_cvtps_pd(
                _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1)));
            _mm512_mask_storeu_pd(hi + j, k0, _mm512_add_pd(_mm512_maskz_loadu_pd(k0, hi + j), e0));
            _mm512_mask_storeu_pd(hi + j + 8, k1,
                                  _mm512_add_pd(_mm512_maskz_loadu_pd(k1, hi + j + 8), e1));
        }
        if (bad)
            return 0;
    }
    return 1;
}
#else
#define FSM_EXP_512 0
#endif

/* tests/c/exp_simd_check.c builds the helpers above alone (a second, quick compile) */
#ifndef FSM_HELPERS_ONLY
#define T float
#define SFX f32
#define LANE_GATHER FSM_FLOAT_LANE_GATHER
#define EXP fsm_expf
#define EXP_SUM_512 fsm_exp_sum_512_f32
#define INLINE_LOG fsm_log_for_float
#include "rowops_impl.h"
#undef EXP_SUM_512
#undef INLINE_LOG
#undef LANE_GATHER
#undef T
#undef SFX
#undef EXP

#define T double
#define SFX f64
#define LANE_GATHER 0
#define EXP fsm_exp
#define EXP_SUM_512 fsm_exp_sum_512_f64
#define INLINE_LOG log
#include "rowops_impl.h"
#undef EXP_SUM_512
#undef INLINE_LOG
#undef LANE_GATHER
#undef T
#undef SFX
#undef EXP

/* ---- Small helpers of the entry points: target check and loss sum ----
 * Here rather than in c_kernels.pyx for the clones: the Cython module is compiled for the
 * baseline, where the unsigned 64-bit compare stayed scalar (65536 targets: 137 us, as
 * long as a 65536x10 cross-entropy's own rows on 2 threads take to finish a tenth). */

FSM_CLONES ptrdiff_t fsm_check_targets(const int64_t *t, ptrdiff_t n, int64_t k,
                                       int64_t ignore_index, ptrdiff_t *ignored)
{
    uint64_t bad = 0;
    ptrdiff_t count = 0;
#pragma omp simd reduction(| : bad) reduction(+ : count)
    for (ptrdiff_t i = 0; i < n; i++) {
        uint64_t is_ignored = t[i] == ignore_index;
        count += (ptrdiff_t)is_ignored;
        bad |= ((uint64_t)t[i] >= (uint64_t)k) & (is_ignored ^ 1u);
    }
    *ignored = count;
    if (!bad)
        return -1;
    for (ptrdiff_t i = 0; i < n; i++)
        if ((uint64_t)t[i] >= (uint64_t)k && t[i] != ignore_index)
            return i;
    return -1;
}

/* sum of a[:n], pairwise: halves down to blocks of at most 128, each summed in 16
 * interleaved partial sums (error O(log n) ulp, as NumPy's sum). */
FSM_CLONES double fsm_pairwise_sum(const double *a, ptrdiff_t n)
{
    if (n > 128) {
        ptrdiff_t half = (n / 2) & ~(ptrdiff_t)15;
        return fsm_pairwise_sum(a, half) + fsm_pairwise_sum(a + half, n - half);
    }
    double r[16] = {0.0};
    ptrdiff_t whole = n & ~(ptrdiff_t)15;
    for (ptrdiff_t i = 0; i < whole; i += 16)
#pragma omp simd
        for (ptrdiff_t l = 0; l < 16; l++)
            r[l] += a[i + l];
    for (int w = 8; w >= 1; w /= 2)
        for (int l = 0; l < w; l++)
            r[l] += r[l + w];
    double res = r[0];
    for (ptrdiff_t i = whole; i < n; i++)
        res += a[i];
    return res;
}

const char *fsm_isa(void)
{
#if FSM_HAVE_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4"))
        return "x86-64-v4 (AVX-512) clone";
    if (__builtin_cpu_supports("x86-64-v3"))
        return "x86-64-v3 (AVX2+FMA) clone";
    return "baseline x86-64 (SSE2) clone";
#else
    return "single portable build (no runtime dispatch)";
#endif
}

/* ---- Half precision: float16 and bfloat16 storage, float32 compute ----
 *
 * The rows are read and written as 16-bit values: a block of rows (FSM_HALF_BLOCK floats,
 * L1/L2-resident) is widened into a float32 buffer, the float32 kernel above runs on it,
 * and its results are rounded back (to nearest, ties to even) into the half output, so
 * memory sees 2 bytes per element each way and the float32 path is the one tested.
 * The conversions are integer and float arithmetic that vectorises in every clone (gcc 12
 * turns a `_Float16` cast into one scalar vcvtph2ps per element, and a float multiply by
 * 2^k of a subnormal would read 0 under a caller's denormals-are-zero mode): float16
 * subnormals go through an exact int -> float conversion and a rounding by the
 * 1.5 * 2^23 trick, NaN stays NaN (quiet), beyond 65504 rounds to inf as IEEE says. */
#define FSM_HALF_BLOCK 8192

/* the float32 kernels once more with fsm_expf_short (see there), for the 16-bit results */
FSM_DECLARE(float, h32)
#define T float
#define SFX h32
#define LANE_GATHER FSM_FLOAT_LANE_GATHER
#define EXP fsm_expf_short
#define EXP_SUM_512 fsm_exp_sum_512_h32
#define INLINE_LOG fsm_log_for_float
#include "rowops_impl.h"
#undef EXP_SUM_512
#undef INLINE_LOG
#undef LANE_GATHER
#undef T
#undef SFX
#undef EXP

FSM_INLINE float fsm_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

FSM_INLINE uint32_t fsm_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

FSM_INLINE float fsm_f16_to_f32(uint16_t h)
{
    uint32_t em = h & 0x7fffu, sign = (uint32_t)(h & 0x8000u) << 16;
    /* normal: rebias the exponent (127 - 15); inf/NaN: exponent all ones */
    uint32_t bits = (em << 13) + (em >= 0x7c00u ? 0x70000000u : 0x38000000u);
    float tiny = (float)(int32_t)em * 5.9604644775390625e-08f; /* subnormal: em * 2^-24 */
    float f = em < 0x0400u ? tiny : fsm_bits_f32(bits);
    return fsm_bits_f32(fsm_f32_bits(f) | sign);
}

FSM_INLINE uint16_t fsm_f32_to_f16(float f)
{
    uint32_t u = fsm_f32_bits(f), a = u & 0x7fffffffu, sign = (u >> 16) & 0x8000u;
    /* normal half: drop 13 mantissa bits, rounding to nearest even (a carry into the
     * exponent is right, up to inf at 65520) */
    uint32_t normal = (a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13;
    /* below 2^-14: the multiple of 2^-24 nearest to |f| (ties to even, by the float add) */
    float scaled = fsm_bits_f32(a) * 16777216.0f + 12582912.0f;
    uint32_t sub = fsm_f32_bits(scaled) - 0x4b400000u;
    uint32_t r = a < 0x38800000u ? sub : (a >= 0x47800000u ? 0x7c00u : normal);
    r = a > 0x7f800000u ? 0x7e00u : r;
    return (uint16_t)(r | sign);
}

FSM_INLINE float fsm_bf16_to_f32(uint16_t h)
{
    return fsm_bits_f32((uint32_t)h << 16);
}

FSM_INLINE uint16_t fsm_f32_to_bf16(float f)
{
    uint32_t u = fsm_f32_bits(f);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : r);
}

/* float16 by the CPU's own conversions where it has them (F16C: vcvtph2ps / vcvtps2ph, one
 * instruction per 8 or 16 values, rounding to nearest even, NaN kept quiet); the integer
 * code above otherwise (and for every bfloat16: a shift one way, an add and a shift the
 * other).  Measured in the 32 KiB blocks of fsm_rows_half, softmax 4096x1000, 2 threads:
 * see the closing note of the half-precision work. */
#if FSM_X86_PROBE
#define FSM_F16_HW 1
static __attribute__((target("avx512f"))) void fsm_f16_widen_512(const uint16_t *h, float *f,
                                                                 ptrdiff_t n)
{
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(f + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
    for (; i < n; i++)
        f[i] = fsm_f16_to_f32(h[i]);
}

static __attribute__((target("avx512f"))) void fsm_f16_round_512(const float *f, uint16_t *h,
                                                                 ptrdiff_t n)
{
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(h + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(f + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        h[i] = fsm_f32_to_f16(f[i]);
}

static __attribute__((target("avx,f16c"))) void fsm_f16_widen_256(const uint16_t *h, float *f,
                                                                  ptrdiff_t n)
{
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(f + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++)
        f[i] = fsm_f16_to_f32(h[i]);
}

static __attribute__((target("avx,f16c"))) void fsm_f16_round_256(const float *f, uint16_t *h,
                                                                  ptrdiff_t n)
{
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(h + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(f + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        h[i] = fsm_f32_to_f16(f[i]);
}
#else
#define FSM_F16_HW 0
#endif

static FSM_CLONES void fsm_half_widen_portable(const uint16_t *h, float *f, ptrdiff_t n,
                                                int kind)
{
    if (kind == FSM_BF16) {
#pragma omp simd
        for (ptrdiff_t i = 0; i < n; i++)
            f[i] = fsm_bf16_to_f32(h[i]);
    } else {
#pragma omp simd
        for (ptrdiff_t i = 0; i < n; i++)
            f[i] = fsm_f16_to_f32(h[i]);
    }
}

static FSM_CLONES void fsm_half_round_portable(const float *f, uint16_t *h, ptrdiff_t n,
                                                int kind)
{
    if (kind == FSM_BF16) {
#pragma omp simd
        for (ptrdiff_t i = 0; i < n; i++)
            h[i] = fsm_f32_to_bf16(f[i]);
    } else {
#pragma omp simd
        for (ptrdiff_t i = 0; i < n; i++)
            h[i] = fsm_f32_to_f16(f[i]);
    }
}

static void fsm_half_widen(const uint16_t *h, float *f, ptrdiff_t n, int kind)
{
#if FSM_F16_HW
    int level = kind == FSM_F16 ? fsm_x86_level() : 0;
    if (level == 2) {
        fsm_f16_widen_512(h, f, n);
        return;
    }
    if (level == 1) {
        fsm_f16_widen_256(h, f, n);
        return;
    }
#endif
    fsm_half_widen_portable(h, f, n, kind);
}

static void fsm_half_round(const float *f, uint16_t *h, ptrdiff_t n, int kind)
{
#if FSM_F16_HW
    int level = kind == FSM_F16 ? fsm_x86_level() : 0;
    if (level == 2) {
        fsm_f16_round_512(f, h, n);
        return;
    }
    if (level == 1) {
        fsm_f16_round_256(f, h, n);
        return;
    }
#endif
    fsm_half_round_portable(f, h, n, kind);
}

void fsm_half_convert(const void *src, void *dst, ptrdiff_t n, int kind, int widen, int portable)
{
    if (widen && portable)
        fsm_half_widen_portable((const uint16_t *)src, (float *)dst, n, kind);
    else if (widen)
        fsm_half_widen((const uint16_t *)src, (float *)dst, n, kind);
    else if (portable)
        fsm_half_round_portable((const float *)src, (uint16_t *)dst, n, kind);
    else
        fsm_half_round((const float *)src, (uint16_t *)dst, n, kind);
}

/* nb rows of K at x by the float32 kernels: widened into buf (nb K floats), the h32 kernel,
 * rounded into out ((nb, K), or (nb,) through lse (nb floats) for logsumexp).  The blocked
 * path's step, and the one-sweep path's rows with a non-finite max or sum (nb = 1). */
static void fsm_half_block_f32(int op, const uint16_t *x, uint16_t *out, int kind,
                               ptrdiff_t nb, ptrdiff_t K, float *buf, float *lse)
{
    fsm_half_widen(x, buf, nb * K, kind);
    if (op == FSM_HALF_LOGSUMEXP) {
        fsm_logsumexp_h32(buf, lse, 0, nb, K);
        fsm_half_round(lse, out, nb, kind);
        return;
    }
    if (op == FSM_HALF_SOFTMAX)
        fsm_softmax_h32(buf, buf, 0, nb, K);
    else
        fsm_log_softmax_h32(buf, buf, 0, nb, K);
    fsm_half_round(buf, out, nb * K, kind);
}

/* ---- Half rows in one sweep each (AVX-512 F/BW/DQ/VL) ----
 *
 * The blocked path above widens a block into float32, runs the float32 kernel's three
 * passes over it and rounds it back: five sweeps over L1/L2 data, and the rows' memory
 * waits fall in the max pass, where nothing else runs.  Here each row (K >= FSM_FUSED_K)
 * is read as 16-bit values by every pass:
 * - span: the max m and a lower bound lo, on the 16-bit patterns as integers, 32 a vector
 *   (fsm_half_span_step; a NaN of either sign makes m or lo NaN, and the row's NaN sum
 *   sends it to the float32 path, which gives the row its NaNs).  The next row's span is
 *   taken during this row's exp pass: its loads are the prefetch, and its exponentials
 *   need not wait on a pass of their own; the row after it is prefetched to L2;
 * - exp and sum: widened in registers (float16: vcvtph2ps; bfloat16: its even and odd
 *   elements, as the high halves of the 32-bit words, with no shuffle: the exponentials
 *   are kept in that order and put back in it), 2^y by vreduceps and a degree-3 fit, two
 *   vector sums per FSM_CHUNK, then double.  A narrow row (m - lo <= 64, |m| <= 4096:
 *   fsm_half_row_narrow) takes y = x log2(e) - m_l in one FMA and no underflow masks;
 *   others y = (x - m) log2(e) and masks.  Where the sum is below 2 the log ops sum once
 *   more without the maxima and take log1p of the rest (fsm_half_row_logs): log_softmax
 *   of a confident row's top class, -t for a tiny t, keeps its digits (in float32 lanes
 *   1 + t would lose t below 2^-24, and the fit's 2^0 is 1 - 7.5e-5);
 * - finish: e / s, or y ln2 - log s from the exponents y kept in the row buffer, rounded
 *   to the half type (narrow bfloat16 rows by vcvtne2ps2bf16 where the CPU has it); or
 *   m + log s per row; the cross-entropy (fsm_ce_half_fused) its loss, and its gradient
 *   from the buffered exponentials of float32's own exp.
 * Rows whose m or sum is not finite take the float32 path (fsm_half_block_f32).
 * Measured (C probe, float16 softmax 4096x1000, ns per element, 1 / 2 threads): float32
 * kernel 0.39 / 0.19, blocked half 0.43 / 0.21; per-row fusion 0.32 (1 thread), two sums
 * and masked tails 0.29, this exp 0.26, the next rows prefetched 0.21 / 0.10 (the
 * next-row max in place of the prefetch: 0.119 -> 0.112 ns at 2 threads in the
 * extension).  Then (extension, kernel calls interleaved with float32's; float32 had
 * reached 0.275 / 0.143; float16 / bfloat16 at 2 threads): 0.113 / 0.120 at the start;
 * narrow rows (fold, no masks), vcvtph2ps and vcvtps2ph on memory 0.105 / 0.117; the
 * degree-3 fit 0.103 / 0.111 (0.175 -> 0.168 at 512 rows: at 4096 the wait on L3 hid it);
 * the row after next prefetched 0.088 / 0.101 (the same distance for float32 rows:
 * 0.91-1.0x their time, ab_kernels); vcvtne2ps2bf16 - / 0.089; two integer maxima for
 * the span in place of four-instruction keys 0.081 / 0.084, cross_entropy 0.0637 ->
 * 0.0607.  Tried: prefetching three or four rows ahead: no change. */
#if FSM_X86_PROBE
#define FSM_HALF_FUSED 1
/* rows this long or longer (softmax: FSM_FUSED_SOFTMAX_K); measured against the blocked
 * path, float16 / bfloat16, 2 threads: log ops 0.31-0.37x its time at K = 32, 0.4-0.5x at
 * 40-128; softmax 0.77-0.92x at 32, 0.88-1.11x at 48, 0.64-0.72x at 64 */
#define FSM_FUSED_K 32
#define FSM_FUSED_SOFTMAX_K 64
#define FSM_AVX512_HALF __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,f16c")))

static int fsm_half_fused_ok(void)
{
    static volatile int ok = -1;
    if (ok < 0) {
        __builtin_cpu_init();
        ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    }
    return ok;
}

/* AVX512_BF16's vcvtne2ps2bf16, for narrow bfloat16 rows' stores (fsm_half_store32) */
static int fsm_bf16_isa_ok(void)
{
    static volatile int ok = -1;
    if (ok < 0) {
        __builtin_cpu_init();
        ok = fsm_half_fused_ok() && __builtin_cpu_supports("avx512bf16");
    }
    return ok;
}

/* e^d for 16-bit results: y = d log2(e), 2^y = 2^floor(y) 2^r with r = y - floor(y) in
 * [0, 1) by one vreduceps, and 2^r by a degree-3 fit (relative error 7.5e-5, a tenth of
 * the half types' rounding steps of 2^-11 and 2^-8 or less: each result stays within 1 ulp;
 * the degree-4 fit, 2.6e-6, took one FMA more: 0.175 -> 0.168 ns an element, float16
 * softmax 512x1000, 1 thread); vscalefps takes floor(y) itself.  Two vector instructions
 * fewer than fsm_expf_short_512's Cody-Waite steps.  y rounds d's error into 2^-24 |y|
 * relative: below 1e-5 wherever the result is not below the half types' range.  Below
 * y = -150, +0 by masks (the assist: see FSM_EXPF_512); NaN stays NaN. */
#define FSM_LOG2E_F 1.44269504088896341f

static FSM_AVX512_HALF inline __attribute__((always_inline)) __m512 fsm_exp2_half_fit(__m512 y)
{
    __m512 r = _mm512_reduce_ps(y, 0x09); /* y - floor(y), inexact not signalled */
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.07802419364452362f), r,
                               _mm512_set1_ps(0.2260672152042389f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.6958337426185608f));
    return _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.9999251961708069f));
}

/* 2^y for y = (x - m) log2(e); below y = floor_y, +0 by masks.  floor_y = -150 keeps every
 * float32 result, subnormal ones too, which bfloat16 softmax needs (its outputs reach
 * 2^-133); elsewhere -64: a float16 output below 2^-25 is 0, and sums of 1 or more lose
 * under K 2^-64 of themselves.  Results between 2^-150 and 2^-126 cost a microcode assist
 * each: float16 softmax 4096x1000 of std-30 logits took 13.1 ms at -150, against 0.38 ms
 * for std 1, 2 threads. */
static FSM_AVX512_HALF inline __attribute__((always_inline)) __m512
fsm_exp2_half_masked_512(__m512 y, float floor_y)
{
    const __mmask16 keep = _mm512_cmp_ps_mask(y, _mm512_set1_ps(floor_y), _CMP_NLT_UQ);
    return _mm512_maskz_scalef_ps(keep, fsm_exp2_half_fit(y), y);
}

/* The narrow rows' form (fsm_half_row_narrow): y = x log2(e) - m_l, one FMA from the
 * widened x, where m_l is m log2(e) rounded to float.  Every exponential of the row then
 * carries the same factor 2^c, c = m log2(e) - m_l (fsm_half_fold_offset): e / s cancels
 * it, the logs take c ln2 off.  y >= -93 in such a row: 2^y with no underflow, no mask */
static FSM_AVX512_HALF inline __attribute__((always_inline)) __m512
fsm_exp2_half_narrow_512(__m512 y)
{
    return _mm512_scalef_ps(fsm_exp2_half_fit(y), y);
}

/* c of fsm_exp2_half_narrow_512, exact in double (a product of two floats is); |c| <= 2^-25
 * 4096 log2(e) < 1.8e-4 in a narrow row */
FSM_INLINE double fsm_half_fold_offset(float m)
{
    return (double)m * (double)FSM_LOG2E_F - (double)(m * FSM_LOG2E_F);
}

/* 2^-c for such a c, to 4e-12 */
FSM_INLINE double fsm_half_unfold(double c)
{
    double t = c * 0.69314718055994531;
    return 1.0 - t + 0.5 * t * t;
}

/* 32 half values (lanes outside k32 read as +0) as two float vectors: float16 in order,
 * bfloat16 even elements then odd; the lanes of each that hold a value of k32's prefix of
 * t elements in *ka, *kb */
static FSM_AVX512_HALF inline __attribute__((always_inline)) void
fsm_half_load32(const uint16_t *p, int kind, ptrdiff_t t, __m512 *a, __m512 *b, __mmask16 *ka,
                __mmask16 *kb)
{
    __m512i v;
    if (t >= 32 && kind != FSM_BF16) { /* vcvtph2ps from memory: no vextracti64x4 */
        *a = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
        *b = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 16)));
        *ka = *kb = 0xffff;
        return;
    }
    if (t >= 32) {
        v = _mm512_loadu_si512(p);
        *ka = *kb = 0xffff;
    } else {
        v = _mm512_maskz_loadu_epi16((__mmask32)((1u << t) - 1u), p);
        if (kind == FSM_BF16) {
            *ka = (__mmask16)((1u << ((t + 1) / 2)) - 1u);
            *kb = (__mmask16)((1u << (t / 2)) - 1u);
        } else {
            *ka = (__mmask16)(t >= 16 ? 0xffffu : (1u << t) - 1u);
            *kb = (__mmask16)(t > 16 ? (1u << (t - 16)) - 1u : 0u);
        }
    }
    if (kind == FSM_BF16) {
        *a = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        *b = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
    } else {
        *a = _mm512_cvtph_ps(_mm512_castsi512_si256(v));
        *b = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(v, 1));
    }
}

/* bfloat16 bits of f in the high half of each word, rounded to nearest even.  Not for NaN
 * (its rounding may carry out of the payload): rows with NaN take the float32 path */
static FSM_AVX512_HALF inline __attribute__((always_inline)) __m512i fsm_bf16_round_hi(__m512 f)
{
    __m512i u = _mm512_castps_si512(f);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    return _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb);
}

/* fsm_half_load32's inverse: a, b rounded to the half type, the first t of 32 stored.
 * bf16_isa (a constant; only where fsm_bf16_isa_ok() and every value is normal or zero,
 * as in a narrow row): bfloat16 by vcvtne2ps2bf16 (it takes subnormals as zero) and one
 * vpermw back to the elements' order, 3 vector instructions for 32 values where the
 * integer rounding takes 11.  Inline asm: its target attribute could not be inlined into
 * the AVX-512 bodies that also serve CPUs without it. */
static FSM_AVX512_HALF inline __attribute__((always_inline)) void
fsm_half_store32(uint16_t *p, int kind, ptrdiff_t t, __m512 a, __m512 b, int bf16_isa)
{
    __m512i v;
    if (kind == FSM_BF16 && bf16_isa) {
        /* words 0-15 a's (the even elements), 16-31 b's; then element j from word
         * (j & 1) * 16 + j / 2 */
        const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10,
                                               25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19,
                                               3, 18, 2, 17, 1, 16, 0);
        __asm__("vcvtne2ps2bf16 %2, %1, %0" : "=v"(v) : "v"(b), "v"(a));
        v = _mm512_permutexvar_epi16(order, v);
    } else if (t >= 32 && kind != FSM_BF16) { /* vcvtps2ph to memory: no vinserti64x4 */
        _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT));
        _mm256_storeu_si256((__m256i *)(p + 16), _mm512_cvtps_ph(b, _MM_FROUND_TO_NEAREST_INT));
        return;
    } else if (kind == FSM_BF16)
        v = _mm512_or_si512(_mm512_srli_epi32(fsm_bf16_round_hi(a), 16),
                            _mm512_and_si512(fsm_bf16_round_hi(b),
                                             _mm512_set1_epi32((int)0xffff0000u)));
    else
        v = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm512_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT)),
            _mm512_cvtps_ph(b, _MM_FROUND_TO_NEAREST_INT), 1);
    if (t >= 32)
        _mm512_storeu_si512(p, v);
    else
        _mm512_mask_storeu_epi16(p, (__mmask32)((1u << t) - 1u), v);
}

/* A row's max m and a lower bound lo (see the design block) in steps, 32 values at a time
 * (lanes outside k kept), from the bits as integers: a signed and an unsigned max.
 * Nonnegative values order as their bits; negative ones follow them as unsigned integers,
 * in reverse.  So a row with a nonnegative value has m at the signed max, and a row with a
 * negative one has its least at the unsigned max (one without has lo = +0, a bound).  An
 * all-negative row's m, the unsigned min, takes a pass of its own over the row (in L1 by
 * then).  Two integer instructions for 32 values where ordered keys took four.  A NaN's
 * bits lie beyond +-inf's: m or lo is NaN then. */
typedef struct {
    float m, lo;
} fsm_half_span;

typedef struct {
    __m512i smax, umax;
} fsm_half_keys;

#define FSM_KEYS_FROM()                                                                    \
    fsm_half_keys keys = {_mm512_set1_epi16((short)0x8000), _mm512_setzero_si512()}

static FSM_AVX512_HALF inline __attribute__((always_inline)) void
fsm_half_span_step(fsm_half_keys *ks, const uint16_t *p, __mmask32 k)
{
    __m512i v = _mm512_maskz_loadu_epi16(k, p);
    ks->smax = _mm512_mask_max_epi16(ks->smax, k, ks->smax, v);
    ks->umax = _mm512_mask_max_epu16(ks->umax, k, ks->umax, v);
}

static FSM_AVX512_HALF inline __attribute__((always_inline)) float
fsm_half_bits_float(uint32_t bits, int kind)
{
    return kind == FSM_BF16 ? fsm_bf16_to_f32((uint16_t)bits) : fsm_f16_to_f32((uint16_t)bits);
}

#define FSM_MASK32(t) ((t) >= 32 ? 0xffffffffu : (__mmask32)((1u << (t)) - 1u))

/* the span of the row xr (K long) whose keys ks are */
static FSM_AVX512_HALF inline __attribute__((always_inline)) fsm_half_span
fsm_half_span_floats(fsm_half_keys ks, int kind, const uint16_t *xr, ptrdiff_t K)
{
#define FSM_HALVES(V, WIDEN) WIDEN(_mm512_castsi512_si256(V)), WIDEN(_mm512_extracti64x4_epi64(V, 1))
    int32_t smax = _mm512_reduce_max_epi32(_mm512_max_epi32(FSM_HALVES(ks.smax, _mm512_cvtepi16_epi32)));
    uint32_t umax = _mm512_reduce_max_epu32(_mm512_max_epu32(FSM_HALVES(ks.umax, _mm512_cvtepu16_epi32)));
    uint32_t top = (uint32_t)smax;
    if (smax < 0) { /* every value negative */
        __m512i umin = _mm512_set1_epi16((short)0xffff);
        for (ptrdiff_t c = 0; c < K; c += 32) {
            const __mmask32 k = FSM_MASK32(K - c);
            umin = _mm512_mask_min_epu16(umin, k, umin, _mm512_maskz_loadu_epi16(k, xr + c));
        }
        top = _mm512_reduce_min_epu32(_mm512_min_epu32(FSM_HALVES(umin, _mm512_cvtepu16_epi32)));
    }
#undef FSM_HALVES
    fsm_half_span r = {fsm_half_bits_float(top, kind),
                       umax >= 0x8000u ? fsm_half_bits_float(umax, kind) : 0.0f};
    return r;
}

static FSM_AVX512_HALF inline __attribute__((always_inline)) fsm_half_span
fsm_half_row_span(const uint16_t *xr, ptrdiff_t K, int kind)
{
    FSM_KEYS_FROM();
    for (ptrdiff_t c = 0; c < K; c += 32)
        fsm_half_span_step(&keys, xr + c, FSM_MASK32(K - c));
    return fsm_half_span_floats(keys, kind, xr, K);
}

/* A narrow row: finite, m - lo <= 64 and |m| <= 4096.  Its exponentials are >= e^-64 (no
 * underflow anywhere, nor in e / s) and fsm_exp2_half_narrow_512's c is small */
FSM_INLINE int fsm_half_row_narrow(fsm_half_span r)
{
    return r.m - r.lo <= 64.0f && fabsf(r.m) <= 4096.0f; /* false for inf and NaN */
}

/* the exp pass's forms: the short exp (masked, or narrow rows'), or float32's own */
enum { FSM_EXP_MASKED, FSM_EXP_NARROW, FSM_EXP_PRECISE };

/* What a row's exp pass reads ahead: the next row (its span is taken on the way), the row
 * after it (prefetched to L2) and the next output row (prefetched for writing).  The last
 * rows of a share name rows of their own share again. */
typedef struct {
    const uint16_t *x, *x_after;
    const void *out;
} fsm_half_ahead;

/* One step of fsm_half_row_exp_sum: 32 elements at c (t of them in the row: 32 in the
 * main loop, where the masks fold away) */
static FSM_AVX512_HALF inline __attribute__((always_inline)) void
fsm_half_exp_step(const uint16_t *xr, ptrdiff_t c, ptrdiff_t t, int kind, int form, __m512 mv,
                  __m512 m_l, float *e, float *ys, fsm_half_ahead ah, fsm_half_keys *keys,
                  __m512 *p0, __m512 *p1, int *count)
{
    fsm_half_span_step(keys, ah.x + c, FSM_MASK32(t));
    _mm_prefetch((const char *)ah.out + 2 * c, _MM_HINT_ET0);
    _mm_prefetch((const char *)(ah.x_after + c), _MM_HINT_T1);
    __m512 a, b;
    __mmask16 ka, kb;
    fsm_half_load32(xr + c, kind, t, &a, &b, &ka, &kb);
    if (count) {
        __mmask16 ea = _mm512_mask_cmp_ps_mask(ka, a, mv, _CMP_EQ_OQ);
        __mmask16 eb = _mm512_mask_cmp_ps_mask(kb, b, mv, _CMP_EQ_OQ);
        *count += __builtin_popcount(ea) + __builtin_popcount(eb);
        ka &= (__mmask16)~ea;
        kb &= (__mmask16)~eb;
    }
    if (form == FSM_EXP_PRECISE) {
        a = fsm_expf_512(_mm512_sub_ps(a, mv));
        b = fsm_expf_512(_mm512_sub_ps(b, mv));
    } else {
        const __m512 l2e = _mm512_set1_ps(FSM_LOG2E_F);
        __m512 ya = form == FSM_EXP_NARROW ? _mm512_fmsub_ps(a, l2e, m_l)
                                           : _mm512_mul_ps(_mm512_sub_ps(a, mv), l2e);
        __m512 yb = form == FSM_EXP_NARROW ? _mm512_fmsub_ps(b, l2e, m_l)
                                           : _mm512_mul_ps(_mm512_sub_ps(b, mv), l2e);
        if (ys) {
            _mm512_storeu_ps(ys + c, ya);
            _mm512_storeu_ps(ys + c + 16, yb);
        }
        /* only bfloat16 softmax keeps its exponentials for subnormal outputs */
        const float floor_y = kind == FSM_BF16 && e ? -150.0f : -64.0f;
        a = form == FSM_EXP_NARROW ? fsm_exp2_half_narrow_512(ya)
                                   : fsm_exp2_half_masked_512(ya, floor_y);
        b = form == FSM_EXP_NARROW ? fsm_exp2_half_narrow_512(yb)
                                   : fsm_exp2_half_masked_512(yb, floor_y);
    }
    if (e) {
        _mm512_storeu_ps(e + c, a);
        _mm512_storeu_ps(e + c + 16, b);
    }
    *p0 = _mm512_mask_add_ps(*p0, ka, *p0, a);
    *p1 = _mm512_mask_add_ps(*p1, kb, *p1, b);
}

/* sum_c e^(x_c - m) in double (times 2^c in the narrow form: fsm_exp2_half_narrow_512),
 * the exponentials to e (fsm_half_load32's order) unless NULL; the span of the row ah.x
 * (K long) to *next on the way, and ah's other rows prefetched: the next row's max no
 * longer waits on memory alone, nor its exponentials on that max.
 * With at_max (a constant at each call), the elements equal to m are counted there and
 * left out of the sum (fsm_half_row_logs).  form (a constant): FSM_EXP_*; precise is
 * float32's own exp (fsm_expf_512), for the cross-entropy's gradient. */
static FSM_AVX512_HALF inline __attribute__((always_inline)) double
fsm_half_row_exp_sum(const uint16_t *xr, ptrdiff_t K, int kind, int form, float m, float *e,
                     float *ys,
                     fsm_half_ahead ah, fsm_half_span *next, int *at_max)
{
    const __m512 mv = _mm512_set1_ps(m), m_l = _mm512_set1_ps(m * FSM_LOG2E_F);
    double s = 0.0;
    int count = 0;
    FSM_KEYS_FROM();
    for (ptrdiff_t c0 = 0; c0 < K; c0 += FSM_CHUNK) {
        ptrdiff_t c1 = (K - c0 < FSM_CHUNK) ? K : c0 + FSM_CHUNK, c = c0;
        __m512 p0 = _mm512_setzero_ps(), p1 = _mm512_setzero_ps();
        for (; c + 32 <= c1; c += 32)
            fsm_half_exp_step(xr, c, 32, kind, form, mv, m_l, e, ys, ah, &keys, &p0, &p1,
                              at_max ? &count : NULL);
        if (c < c1)
            fsm_half_exp_step(xr, c, c1 - c, kind, form, mv, m_l, e, ys, ah, &keys, &p0, &p1,
                              at_max ? &count : NULL);
        s += (double)_mm512_reduce_add_ps(_mm512_add_ps(p0, p1));
    }
    if (at_max)
        *at_max = count;
    *next = fsm_half_span_floats(keys, kind, ah.x, K);
    return s;
}

/* log1p(v) for v >= 0 (or inf, or NaN) to half types' needs: v itself below 2^-30 (error
 * v / 2), else fsm_log_for_float(1 + v), where 1 + v in double keeps v to 2^-23.  glibc's
 * log1p, a call per row, was 12% of a float16 cross-entropy (perf) */
FSM_INLINE double fsm_half_log1p(double v)
{
    return v < 0x1p-30 ? v : fsm_log_for_float(1.0 + v);
}

/* log sum_c e^(x_c - m) for the log ops, the next row's span to *next as
 * fsm_half_row_exp_sum: a sum of 2 or more as it is (its log off by the fit's 7.5e-5 at
 * most, a sixth of a float16 ulp at log 2); below 2, once more without the maxima, to log1p the
 * rest (the count and compare in every pass cost cross_entropy float16 4096x1000 ~7%).
 * The narrow form's factor 2^c comes off here.  *sum: the sum (precise form only) */
static FSM_AVX512_HALF inline __attribute__((always_inline)) double
fsm_half_row_logs(const uint16_t *xr, ptrdiff_t K, int kind, int form, float m, float *e,
                  float *ys,
                  double *sum, fsm_half_ahead ah, fsm_half_span *next)
{
    double s = fsm_half_row_exp_sum(xr, K, kind, form, m, e, ys, ah, next, NULL);
    const double c = form == FSM_EXP_NARROW ? fsm_half_fold_offset(m) : 0.0;
    if (sum)
        *sum = s;
    if (s >= 2.0)
        return fsm_log_for_float(s) - c * 0.69314718055994531;
    int at_max = 0;
    fsm_half_span unused;
    const fsm_half_ahead self = {xr, xr, xr};
    double rest = fsm_half_row_exp_sum(xr, K, kind, form, m, NULL, NULL, self, &unused, &at_max);
    if (form == FSM_EXP_NARROW)
        rest *= fsm_half_unfold(c);
    return fsm_half_log1p(rest + (at_max - 1));
}

/* a softmax row's e / s, or a log_softmax row's (x - m) - log s, to the half type, from
 * the exponents y in e (logs: log s + c ln2, below) or, with from_x (a constant), from
 * the row xr itself (logs: log s) */
static FSM_AVX512_HALF inline __attribute__((always_inline)) void
fsm_half_finish_row(int op, int kind, uint16_t *outr, ptrdiff_t K, const float *e,
                    const uint16_t *xr, double s, float m, double logs, int bf16_isa,
                    int from_x)
{
    if (op == FSM_HALF_SOFTMAX) {
        const __m512 inv = _mm512_set1_ps((float)(1.0 / s));
        for (ptrdiff_t c = 0; c < K; c += 32)
            fsm_half_store32(outr + c, kind, K - c, _mm512_mul_ps(_mm512_loadu_ps(e + c), inv),
                             _mm512_mul_ps(_mm512_loadu_ps(e + c + 16), inv), bf16_isa);
        return;
    }
    const __m512 lv = _mm512_set1_ps((float)logs);
    if (from_x) {
        const __m512 mv = _mm512_set1_ps(m);
        for (ptrdiff_t c = 0; c < K; c += 32) {
            __m512 a, b;
            __mmask16 ka, kb;
            fsm_half_load32(xr + c, kind, K - c, &a, &b, &ka, &kb);
            fsm_half_store32(outr + c, kind, K - c, _mm512_sub_ps(_mm512_sub_ps(a, mv), lv),
                             _mm512_sub_ps(_mm512_sub_ps(b, mv), lv), bf16_isa);
        }
        return;
    }
    /* e: the exponents y = (x - m) log2(e) + c (fsm_half_load32's order), c the narrow
     * form's offset (else 0): out = y ln2 - (log s + c ln2), one FMA where the reload
     * took a conversion and two subtractions.  y's rounding is 2^-24 of x - m, and |out|
     * >= |x - m|; but at the maxima y = c, not 0, and out = -log s comes from c ln2 less
     * c ln2 + log s, in float: rows with log s < 2^-10 and c != 0 reload x */
    const __m512 ln2 = _mm512_set1_ps(0.693147180559945309f);
    for (ptrdiff_t c = 0; c < K; c += 32)
        fsm_half_store32(outr + c, kind, K - c, _mm512_fmsub_ps(_mm512_loadu_ps(e + c), ln2, lv),
                         _mm512_fmsub_ps(_mm512_loadu_ps(e + c + 16), ln2, lv), bf16_isa);
}

/* rows [r0, r1) of K >= FSM_FUSED_K; e: K + 32 floats.  out: (n, K), (n,) for logsumexp.
 * bf16_isa: fsm_bf16_isa_ok() for bfloat16, for narrow rows' stores */
static FSM_AVX512_HALF inline __attribute__((always_inline)) void
fsm_rows_half_fused_body(int op, const uint16_t *x, uint16_t *out, int kind, ptrdiff_t r0,
                         ptrdiff_t r1, ptrdiff_t K, float *e, int bf16_isa)
{
    int have_span = 0; /* row i's already there (from row i - 1's exp pass) */
    fsm_half_span span = {0.0f, 0.0f};
    for (ptrdiff_t i = r0; i < r1; i++) {
        const uint16_t *xr = x + i * K, *x_next = i + 1 < r1 ? xr + K : xr;
        uint16_t *outr = op == FSM_HALF_LOGSUMEXP ? out + i : out + i * K;
        const fsm_half_ahead ah = {x_next, i + 2 < r1 ? xr + 2 * K : x_next,
                                   op == FSM_HALF_LOGSUMEXP ? (const void *)x_next : outr + K};
        if (!have_span)
            span = fsm_half_row_span(xr, K, kind);
        const float mi = span.m;
        const int narrow = fsm_half_row_narrow(span);
        double s = NAN, logs = NAN; /* softmax's sum; the log ops' log of it */
        /* log_softmax keeps the row's exponents y in e for its finish */
        float *ys = op == FSM_HALF_LOG_SOFTMAX ? e : NULL;
        have_span = isfinite(mi) && i + 1 < r1;
        if (narrow && op == FSM_HALF_SOFTMAX)
            s = fsm_half_row_exp_sum(xr, K, kind, FSM_EXP_NARROW, mi, e, NULL, ah, &span, NULL);
        else if (isfinite(mi) && op == FSM_HALF_SOFTMAX)
            s = fsm_half_row_exp_sum(xr, K, kind, FSM_EXP_MASKED, mi, e, NULL, ah, &span, NULL);
        else if (narrow)
            logs = fsm_half_row_logs(xr, K, kind, FSM_EXP_NARROW, mi, NULL, ys, NULL, ah, &span);
        else if (isfinite(mi))
            logs = fsm_half_row_logs(xr, K, kind, FSM_EXP_MASKED, mi, NULL, ys, NULL, ah, &span);
        if (!((op == FSM_HALF_SOFTMAX ? s : logs) < INFINITY)) { /* m or sum: inf or NaN */
            float lse1;
            fsm_half_block_f32(op, xr, outr, kind, 1, K, e, &lse1);
            continue;
        }
        if (op == FSM_HALF_LOGSUMEXP) {
            float lse = (float)((double)mi + logs);
            fsm_half_round(&lse, outr, 1, kind);
        } else {
            const double c = narrow ? fsm_half_fold_offset(mi) : 0.0;
            const int from_x = op == FSM_HALF_LOG_SOFTMAX && c != 0.0 && logs < 0x1p-10;
            logs += from_x ? 0.0 : c * 0.69314718055994531;
            if (from_x)
                fsm_half_finish_row(op, kind, outr, K, e, xr, s, mi, logs, narrow && bf16_isa, 1);
            else if (narrow && bf16_isa)
                fsm_half_finish_row(op, kind, outr, K, e, xr, s, mi, logs, 1, 0);
            else
                fsm_half_finish_row(op, kind, outr, K, e, xr, s, mi, logs, 0, 0);
        }
    }
}

/* the body once per op and type, each with its constants folded */
static FSM_AVX512_HALF void fsm_rows_half_fused(int op, const uint16_t *x, uint16_t *out,
                                                int kind, ptrdiff_t r0, ptrdiff_t r1,
                                                ptrdiff_t K, float *e)
{
    const int bf16_isa = kind == FSM_BF16 && fsm_bf16_isa_ok();
#define FSM_FUSED_CASE(OP, KIND)                                                           \
    if (op == OP && kind == KIND) {                                                        \
        fsm_rows_half_fused_body(OP, x, out, KIND, r0, r1, K, e, bf16_isa);                \
        return;                                                                            \
    }
    FSM_FUSED_CASE(FSM_HALF_SOFTMAX, FSM_F16)
    FSM_FUSED_CASE(FSM_HALF_SOFTMAX, FSM_BF16)
    FSM_FUSED_CASE(FSM_HALF_LOG_SOFTMAX, FSM_F16)
    FSM_FUSED_CASE(FSM_HALF_LOG_SOFTMAX, FSM_BF16)
    FSM_FUSED_CASE(FSM_HALF_LOGSUMEXP, FSM_F16)
    FSM_FUSED_CASE(FSM_HALF_LOGSUMEXP, FSM_BF16)
#undef FSM_FUSED_CASE
}

/* cross-entropy of index targets with no smoothing and no `correct` (fsm_ce_half takes
 * those to the blocked path): loss, lse, and unless grad is NULL the gradient, for rows
 * [r0, r1) of K >= FSM_FUSED_K: the terms of fin_ce_index (rowops_impl.h) with eps = 0.
 * The loss alone takes the short exp; with the gradient, float32's own (precise: its
 * p Q - q cancels near p = 1), and the gradient row is finished in the exponentials'
 * buffer and rounded once.  e: 2 (K + 32) floats. */
static FSM_AVX512_HALF inline __attribute__((always_inline)) void
fsm_ce_half_fused_body(const uint16_t *x, int kind, const int64_t *index, const double *weight,
                       int64_t ignore_index, double scale, double *loss, uint16_t *grad,
                       double z_coef, double *lse, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K,
                       float *e)
{
    const int precise = grad != NULL;
    int have_span = 0; /* as fsm_rows_half_fused */
    fsm_half_span span = {0.0f, 0.0f};
    for (ptrdiff_t i = r0; i < r1; i++) {
        const uint16_t *xr = x + i * K, *x_next = i + 1 < r1 ? xr + K : xr;
        uint16_t *gr = grad ? grad + i * K : NULL;
        const fsm_half_ahead ah = {x_next, i + 2 < r1 ? xr + 2 * K : x_next,
                                   gr ? (const void *)(gr + K) : x_next};
        const int64_t y = index[i];
        const int ignored = y == ignore_index;
        if (ignored && !lse) {
            loss[i] = 0.0;
            if (gr)
                memset(gr, 0, (size_t)K * sizeof *gr);
            have_span = 0;
            continue;
        }
        if (!have_span)
            span = fsm_half_row_span(xr, K, kind);
        const float mi = span.m;
        const int narrow = fsm_half_row_narrow(span);
        double logs = NAN, s = NAN;
        have_span = isfinite(mi) && i + 1 < r1;
        if (isfinite(mi) && precise)
            logs = fsm_half_row_logs(xr, K, kind, FSM_EXP_PRECISE, mi, e, NULL, &s, ah, &span);
        else if (narrow)
            logs = fsm_half_row_logs(xr, K, kind, FSM_EXP_NARROW, mi, NULL, NULL, NULL, ah, &span);
        else if (isfinite(mi))
            logs = fsm_half_row_logs(xr, K, kind, FSM_EXP_MASKED, mi, NULL, NULL, NULL, ah, &span);
        if (!(logs < INFINITY)) { /* m or the sum: inf or NaN */
            float *g = grad ? e + K + 32 : NULL;
            fsm_half_widen(xr, e, K, kind);
            fsm_ce_index_f32(e, index + i, weight, ignore_index, 0.0, scale, loss + i, g,
                             z_coef, lse ? lse + i : NULL, NULL, 0, 1, K);
            if (gr)
                fsm_half_round(g, gr, K, kind);
            continue;
        }
        if (lse)
            lse[i] = (double)mi + logs;
        if (ignored) {
            loss[i] = 0.0;
            if (gr)
                memset(gr, 0, (size_t)K * sizeof *gr);
            continue;
        }
        double xy = kind == FSM_BF16 ? fsm_bf16_to_f32(xr[y]) : fsm_f16_to_f32(xr[y]);
        double wy = weight[y];
        loss[i] = wy != 0.0 ? wy * (logs - (xy - (double)mi)) : 0.0 * logs;
        if (gr) {
            double zl = z_coef != 0.0 ? z_coef * ((double)mi + logs) : 0.0;
            const float a = (float)((scale * wy + zl) / s);
            /* y's place in e: bfloat16 keeps a block's even elements, then its odd ones */
            ptrdiff_t j = y & 31, py = kind == FSM_BF16 ? (y - j) + (j & 1) * 16 + (j >> 1) : y;
            const float gy = e[py] * a - (float)(scale * wy);
            const __m512 av = _mm512_set1_ps(a);
            for (ptrdiff_t c = 0; c < K; c += 32)
                fsm_half_store32(gr + c, kind, K - c, _mm512_mul_ps(_mm512_loadu_ps(e + c), av),
                                 _mm512_mul_ps(_mm512_loadu_ps(e + c + 16), av), 0);
            fsm_half_round(&gy, gr + y, 1, kind);
        }
    }
}

static FSM_AVX512_HALF void fsm_ce_half_fused(const uint16_t *x, int kind, const int64_t *index,
                                              const double *weight, int64_t ignore_index,
                                              double scale, double *loss, uint16_t *grad,
                                              double z_coef, double *lse, ptrdiff_t r0,
                                              ptrdiff_t r1, ptrdiff_t K, float *e)
{
#define FSM_CE_CASE(KIND, GRAD)                                                            \
    fsm_ce_half_fused_body(x, KIND, index, weight, ignore_index, scale, loss, GRAD, z_coef,  \
                           lse, r0, r1, K, e)
    if (kind == FSM_BF16 && grad)
        FSM_CE_CASE(FSM_BF16, grad);
    else if (kind == FSM_BF16)
        FSM_CE_CASE(FSM_BF16, NULL);
    else if (grad)
        FSM_CE_CASE(FSM_F16, grad);
    else
        FSM_CE_CASE(FSM_F16, NULL);
#undef FSM_CE_CASE
}
#else
#define FSM_HALF_FUSED 0
#endif

/* rows per block and the float buffers one block needs (NULL: out of memory) */
static ptrdiff_t fsm_half_rows(ptrdiff_t K)
{
    return K >= FSM_HALF_BLOCK ? 1 : FSM_HALF_BLOCK / K;
}

int fsm_rows_half(int op, const uint16_t *x, uint16_t *out, int kind, ptrdiff_t r0,
                  ptrdiff_t r1, ptrdiff_t K)
{
#if FSM_HALF_FUSED
    if (K >= (op == FSM_HALF_SOFTMAX ? FSM_FUSED_SOFTMAX_K : FSM_FUSED_K) &&
        fsm_half_fused_ok()) {
        float *e = (float *)malloc((size_t)(K + 32) * sizeof(float));
        if (!e)
            return -1;
        fsm_rows_half_fused(op, x, out, kind, r0, r1, K, e);
        free(e);
        return 0;
    }
#endif
    ptrdiff_t B = fsm_half_rows(K);
    float *buf = (float *)malloc((size_t)(B * K + B) * sizeof(float));
    if (!buf)
        return -1;
    float *lse = buf + B * K;
    for (ptrdiff_t rb = r0; rb < r1; rb += B) {
        ptrdiff_t nb = (r1 - rb < B) ? r1 - rb : B;
        fsm_half_block_f32(op, x + rb * K, op == FSM_HALF_LOGSUMEXP ? out + rb : out + rb * K,
                           kind, nb, K, buf, lse);
    }
    free(buf);
    return 0;
}

int fsm_ce_half(const uint16_t *x, int kind, const int64_t *index, const uint16_t *soft,
                const double *weight, int64_t ignore_index, double eps, double scale,
                double *loss, uint16_t *grad, double z_coef, double *lse, uint8_t *correct,
                ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K)
{
#if FSM_HALF_FUSED
    if (index && eps == 0.0 && !correct && K >= FSM_FUSED_K && fsm_half_fused_ok()) {
        float *e = (float *)malloc((size_t)(2 * (K + 32)) * sizeof(float));
        if (!e)
            return -1;
        fsm_ce_half_fused(x, kind, index, weight, ignore_index, scale, loss, grad, z_coef, lse,
                          r0, r1, K, e);
        free(e);
        return 0;
    }
#endif
    ptrdiff_t B = fsm_half_rows(K);
    size_t parts = 1 + (grad != NULL) + (soft != NULL);
    float *buf = (float *)malloc(parts * (size_t)(B * K) * sizeof(float));
    if (!buf)
        return -1;
    float *g = grad ? buf + B * K : NULL;
    float *t = soft ? buf + (parts - 1) * B * K : NULL;
    for (ptrdiff_t rb = r0; rb < r1; rb += B) {
        ptrdiff_t nb = (r1 - rb < B) ? r1 - rb : B;
        fsm_half_widen(x + rb * K, buf, nb * K, kind);
        if (index) {
            fsm_ce_index_f32(buf, index + rb, weight, ignore_index, eps, scale, loss + rb, g,
                             z_coef, lse ? lse + rb : NULL, correct ? correct + rb : NULL, 0,
                             nb, K);
        } else {
            fsm_half_widen(soft + rb * K, t, nb * K, kind);
            fsm_ce_soft_f32(buf, t, weight, eps, scale, loss + rb, g, z_coef,
                            lse ? lse + rb : NULL, 0, nb, K);
        }
        if (grad)
            fsm_half_round(g, grad + rb * K, nb * K, kind);
    }
    free(buf);
    return 0;
}
#endif /* FSM_HELPERS_ONLY */
