/* Built and run by tests/test_exp_simd.py: the c backend's AVX-512 exp loops (rowops.c,
 * FSM_EXP_512) against the portable exp they replace, bit for bit.  Exit 0: all equal;
 * 1: a difference (printed); 77: this CPU or build has no AVX-512 helpers. */
#define FSM_HELPERS_ONLY
#include "rowops.c"

#include <stdio.h>

#if FSM_EXP_512
static long differ(const void *a, const void *b, size_t n, const char *what, double at)
{
    static int shown = 0;
    if (!memcmp(a, b, n))
        return 0;
    if (shown++ < 10)
        printf("%s differs at %.17g\n", what, at);
    return 1;
}

/* exp arguments are x - max <= 0 or NaN in the kernels; +inf (portable NaN, vscalef inf)
 * never reaches them and is left out */
static __attribute__((target("avx512f"))) long check(void)
{
    long bad = 0, n = 0;
    const double sd[] = {-INFINITY, NAN,    -0.0,   0.0,    -745.2,
                         -745.1,    -744.4, -708.5, -708.3, -1e-300};
    for (int i = 0; i < (int)(sizeof sd / sizeof sd[0]); i++) {
        double a = fsm_exp(sd[i]), b[8];
        _mm512_storeu_pd(b, fsm_exp_512(_mm512_set1_pd(sd[i])));
        bad += differ(&a, b, 8, "double exp", sd[i]), n++;
    }
    for (double v = -760.0; v < 710.0; v += 0.000731) {
        double a = fsm_exp(v), b[8];
        _mm512_storeu_pd(b, fsm_exp_512(_mm512_set1_pd(v)));
        bad += differ(&a, b, 8, "double exp", v), n++;
    }
    const float sf[] = {-INFINITY, NAN, -0.0f, 0.0f, -103.9f, -103.3f, -87.5f, -87.3f, -1e-30f};
    for (int i = 0; i < (int)(sizeof sf / sizeof sf[0]); i++) {
        float a = fsm_expf(sf[i]), a2 = fsm_expf_short(sf[i]), b[16], b2[16];
        _mm512_storeu_ps(b, fsm_expf_512(_mm512_set1_ps(sf[i])));
        _mm512_storeu_ps(b2, fsm_expf_short_512(_mm512_set1_ps(sf[i])));
        bad += differ(&a, b, 4, "float exp", sf[i]) + differ(&a2, b2, 4, "short exp", sf[i]);
        n += 2;
    }
    for (float v = -110.0f; v < 88.0f; v += 0.000173f) {
        float a = fsm_expf(v), a2 = fsm_expf_short(v), b[16], b2[16];
        _mm512_storeu_ps(b, fsm_expf_512(_mm512_set1_ps(v)));
        _mm512_storeu_ps(b2, fsm_expf_short_512(_mm512_set1_ps(v)));
        bad += differ(&a, b, 4, "float exp", v) + differ(&a2, b2, 4, "short exp", v);
        n += 2;
    }
    /* the lane pass against its portable loop: same exponentials, same double sums */
    float v[31 * 16], w[31 * 16], mm[16], blk[100], blk2[100];
    double hi[16] = {0}, hi2[16] = {0};
    volatile uint32_t seed0 = 12345u; /* opaque: no folding of the references */
    uint32_t seed = seed0;
    for (int i = 0; i < 31 * 16; i++) {
        seed = seed * 1664525u + 1013904223u;
        v[i] = w[i] = (float)((seed >> 8) % 20000u) * -0.005f;
    }
    v[3] = w[3] = NAN;
    v[40] = w[40] = -INFINITY;
    for (int l = 0; l < 16; l++)
        mm[l] = (float)l * 0.25f;
    fsm_lanes_exp_f32(v, 31, mm, hi, 0);
    for (int c = 0; c < 31; c++)
        for (int l = 0; l < 16; l++) {
            w[c * 16 + l] = fsm_expf(w[c * 16 + l] - mm[l]);
            hi2[l] += w[c * 16 + l];
        }
    bad += differ(v, w, sizeof v, "lane exponentials", 0);
    bad += differ(hi, hi2, sizeof hi, "lane sums", 0);
    for (int i = 0; i < 100; i++) {
        volatile float q = -0.37f * (float)i; /* folded at compile time, gcc's reference
                                                 exps came out other (8 ulp off at -17.02) */
        blk[i] = blk2[i] = q;
    }
    fsm_block_exp_512_f32(blk, 93);
    for (int i = 0; i < 93; i++)
        blk2[i] = fsm_expf(blk2[i]);
    bad += differ(blk, blk2, sizeof blk, "block exp (and the masked tail)", 0);
    /* the column kernels' compensated pass, 21 columns (a masked tail) over 40 rows */
    double xc[40 * 21], mc[21], h1[21] = {0}, l1[21] = {0}, h2[21] = {0}, l2[21] = {0};
    for (int i = 0; i < 40 * 21; i++) {
        seed = seed * 1664525u + 1013904223u;
        xc[i] = (double)((seed >> 8) % 100000u) * -0.0009;
    }
    xc[5] = NAN;
    for (int j = 0; j < 21; j++)
        mc[j] = (double)j * 0.01;
    for (int r = 0; r < 40; r++) {
        fsm_cols_exp_twosum_512_f64(xc + r * 21, mc, h1, l1, 21);
        for (int j = 0; j < 21; j++) {
            /* e rounded before the sum (gcc would fuse exp's last multiply into the add) */
            volatile double ev = fsm_exp(xc[r * 21 + j] - mc[j]);
            double e = ev, sum = h2[j] + e, vv = sum - h2[j];
            l2[j] += (h2[j] - (sum - vv)) + (e - vv);
            h2[j] = sum;
        }
    }
    bad += differ(h1, h2, sizeof h1, "column sums", 0) + differ(l1, l2, sizeof l1, "column errors", 0);
    printf("checked %ld values, %ld differ\n", n, bad);
    return bad;
}
#endif

int main(void)
{
#if FSM_EXP_512
    if (fsm_x86_level() == 2)
        return check() ? 1 : 0;
#endif
    printf("no AVX-512 exp helpers here\n");
    return 77;
}
