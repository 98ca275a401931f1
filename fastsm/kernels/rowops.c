/* Row kernels of the cython backend.
 *
 * Design
 * - Three passes per row (max; exp stored in the output and summed; scale), the usual CPU
 *   form: the exponentials are computed once and kept.  A single-pass "online" softmax
 *   re-scales the running sum and measured slower on CPU (PERF-NOTES.md).
 * - exp is our own, branch-free and inlined: Cody-Waite range reduction x = n ln2 + r,
 *   a Taylor polynomial of e^r on |r| <= ln2/2 (degree 7 for float: error 5e-9; degree 13
 *   for double: 4e-18), and 2^n built from exponent bits in two halves so results down to
 *   the subnormal range come out right.  It keeps NaN (the clamp below returns x for NaN)
 *   and sends -inf and anything under the underflow threshold to +0.  libm's expf is
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
    x = (-104.0f > x) ? -104.0f : x; /* maxps semantics: NaN stays NaN; -inf -> underflow */
    float t = x * 1.44269504088896341f + 12582912.0f; /* 1.5 * 2^23: round to integer */
    float n = t - 12582912.0f;
    int32_t ti;
    memcpy(&ti, &t, sizeof ti);
    int32_t ni = ti - 0x4b400000;
    float r = x - n * 0.693145751953125f; /* ln2 high part: n * it is exact */
    r = r - n * 1.428606765330187045e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t n1 = ni >> 1, n2 = ni - n1; /* 2^n = 2^n1 * 2^n2, each a normal number */
    uint32_t b1 = (uint32_t)(n1 + 127) << 23, b2 = (uint32_t)(n2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    return p * s1 * s2;
}

FSM_INLINE double fsm_exp(double x)
{
    x = (-746.0 > x) ? -746.0 : x;
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

/* What rowops_impl.h's lanes_rows and cols write (a constant at each use). */
enum { FSM_WRITE_EXP, FSM_WRITE_SOFTMAX, FSM_WRITE_LOG_SOFTMAX, FSM_WRITE_LSE, FSM_WRITE_NONE };

#define T float
#define SFX f32
#define EXP fsm_expf
#include "rowops_impl.h"
#undef T
#undef SFX
#undef EXP

#define T double
#define SFX f64
#define EXP fsm_exp
#include "rowops_impl.h"
#undef T
#undef SFX
#undef EXP

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
