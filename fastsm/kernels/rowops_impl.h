/* Instantiated twice by rowops.c: T = float (SFX f32) and T = double (SFX f64).
 * Needs: T, SFX, EXP (the vectorisable exp of T), FSM_CLONES. */

#define FSM_CAT2(a, b) a##_##b
#define FSM_CAT(a, b) FSM_CAT2(a, b)
#define N(f) FSM_CAT(f, SFX)

/* max of a row (K >= 1).  With NaN present the result may or may not be NaN (OpenMP leaves
 * it open): either way x - m is NaN for the NaN entry and the row sum turns NaN. */
static inline T N(row_max)(const T *x, ptrdiff_t K)
{
    T m = x[0];
#pragma omp simd reduction(max : m)
    for (ptrdiff_t c = 1; c < K; c++)
        m = x[c] > m ? x[c] : m;
    return m;
}

/* s = sum_c exp(x_c - m), storing the exponentials in e when e != NULL.  The vector lanes
 * sum in T over chunks of FSM_CHUNK elements (each lane adds FSM_CHUNK / width terms, all in
 * [0, 1]) and the chunk sums go into a double: float rows of 200k classes keep their
 * digits without converting every element to double in the hot loop. */
#define FSM_CHUNK 1024
static inline double N(row_exp_sum)(const T *x, T *e, ptrdiff_t K, T m)
{
    double s = 0.0;
    for (ptrdiff_t c0 = 0; c0 < K; c0 += FSM_CHUNK) {
        ptrdiff_t c1 = (K - c0 < FSM_CHUNK) ? K : c0 + FSM_CHUNK;
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
    return s;
}

/* Short rows: per-row loops of a few elements never reach the vector body, so a block of
 * rows is shifted first and exp runs once over the whole contiguous block. */
#define FSM_BLOCK 2048
#define FSM_SHORT_K 32

static inline void N(block_exp)(const T *x, ptrdiff_t nb, ptrdiff_t K, T *m, T *e, double *s)
{
    for (ptrdiff_t i = 0; i < nb; i++) {
        m[i] = N(row_max)(x + i * K, K);
        for (ptrdiff_t c = 0; c < K; c++)
            e[i * K + c] = x[i * K + c] - m[i];
    }
    ptrdiff_t len = nb * K;
#pragma omp simd
    for (ptrdiff_t j = 0; j < len; j++)
        e[j] = EXP(e[j]);
    for (ptrdiff_t i = 0; i < nb; i++) {
        double acc = 0.0;
        for (ptrdiff_t c = 0; c < K; c++)
            acc += e[i * K + c];
        s[i] = acc;
    }
}

/* Iterate rows [r0, r1): long rows one at a time, short rows in blocks through block_exp.
 * E_BLOCK: where the exponentials go ((rows, K) array or NULL for "nowhere");
 * FIN(ctx, i, xr, er, m, s): the op's per-row finish, a static inline function. */
#define FSM_FOR_ROWS(E_BLOCK, FIN, CTX)                                                    \
    if (K >= FSM_SHORT_K) {                                                                \
        for (ptrdiff_t i = r0; i < r1; i++) {                                              \
            const T *xr = x + i * K;                                                       \
            T *er = (E_BLOCK) ? (E_BLOCK) + i * K : NULL;                                  \
            T m = N(row_max)(xr, K);                                                       \
            FIN(CTX, i, xr, er, m, N(row_exp_sum)(xr, er, K, m));                          \
        }                                                                                  \
    } else {                                                                               \
        T buf[FSM_BLOCK], mb[FSM_BLOCK];                                                   \
        double sb[FSM_BLOCK];                                                              \
        ptrdiff_t B = FSM_BLOCK / K;                                                       \
        for (ptrdiff_t rb = r0; rb < r1; rb += B) {                                        \
            ptrdiff_t nb = (r1 - rb < B) ? r1 - rb : B;                                    \
            T *eb = (E_BLOCK) ? (E_BLOCK) + rb * K : buf;                                  \
            N(block_exp)(x + rb * K, nb, K, mb, eb, sb);                                   \
            for (ptrdiff_t j = 0; j < nb; j++)                                             \
                FIN(CTX, rb + j, x + (rb + j) * K, eb + j * K, mb[j], sb[j]);              \
        }                                                                                  \
    }

typedef struct {
    T *out;
    ptrdiff_t K;
} N(ew_ctx);

static inline void N(fin_softmax)(const N(ew_ctx) *cx, ptrdiff_t i, const T *xr, T *er, T m,
                                  double s)
{
    (void)xr, (void)m, (void)i;
    T inv = (T)(1.0 / s);
#pragma omp simd
    for (ptrdiff_t c = 0; c < cx->K; c++)
        er[c] *= inv;
}

FSM_CLONES void N(fsm_softmax)(const T *x, T *out, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K)
{
    /* exp goes straight into out (out may be x: each element is read before written) */
    N(ew_ctx) cx = {out, K};
    FSM_FOR_ROWS(out, N(fin_softmax), &cx)
}

static inline void N(fin_log_softmax)(const N(ew_ctx) *cx, ptrdiff_t i, const T *xr, T *er,
                                      T m, double s)
{
    (void)er;
    /* (x - m) - log s: never x - (m + log s), which loses log s when |m| is huge */
    T logs = (T)log(s);
    T *o = cx->out + i * cx->K;
#pragma omp simd
    for (ptrdiff_t c = 0; c < cx->K; c++)
        o[c] = (xr[c] - m) - logs;
}

FSM_CLONES void N(fsm_log_softmax)(const T *x, T *out, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K)
{
    N(ew_ctx) cx = {out, K};
    T *none = NULL;
    FSM_FOR_ROWS(none, N(fin_log_softmax), &cx)
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

static inline void N(fin_logsumexp)(const N(ew_ctx) *cx, ptrdiff_t i, const T *xr, T *er, T m,
                                    double s)
{
    (void)er;
    cx->out[i] = isfinite(m) ? (T)(m + log(s)) : (T)N(lse_nonfinite)(xr, cx->K, m);
}

FSM_CLONES void N(fsm_logsumexp)(const T *x, T *out, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K)
{
    N(ew_ctx) cx = {out, K};
    T *none = NULL;
    FSM_FOR_ROWS(none, N(fin_logsumexp), &cx)
}

typedef struct {
    const void *target; /* int64 (n,) or T (n, K) */
    const double *weight;
    int64_t ignore_index;
    double eps, eps_k, w_sum, scale;
    double *loss;
    T *grad;
    ptrdiff_t K;
} N(ce_ctx);

/* Cross-entropy.  q_c = (1-eps) w_y [c == y] + eps/K w_c;  loss = sum_c q_c (log s - (x_c - m));
 * grad_c = scale (e_c / s * Q - q_c).  The exponentials land in the gradient row first. */
static inline void N(fin_ce_index)(const N(ce_ctx) *cx, ptrdiff_t i, const T *xr, T *er, T m,
                                   double s)
{
    const ptrdiff_t K = cx->K;
    const double *w = cx->weight;
    const double eps = cx->eps, eps_k = cx->eps_k;
    int64_t y = ((const int64_t *)cx->target)[i];
    if (y == cx->ignore_index) {
        cx->loss[i] = 0.0;
        if (cx->grad) {
#pragma omp simd
            for (ptrdiff_t c = 0; c < K; c++)
                er[c] = 0;
        }
        return;
    }
    double logs = log(s), wy = w[y];
    double l = (1.0 - eps) * wy * (logs - ((double)xr[y] - (double)m));
    if (eps != 0.0) {
        double wz = 0.0;
#pragma omp simd reduction(+ : wz)
        for (ptrdiff_t c = 0; c < K; c++)
            wz += w[c] * (double)(xr[c] - m);
        l += eps_k * (cx->w_sum * logs - wz);
    }
    cx->loss[i] = l;
    if (cx->grad) {
        T a = (T)(cx->scale * ((1.0 - eps) * wy + eps_k * cx->w_sum) / s);
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
                                T *grad, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K)
{
    double w_sum = 0.0;
    for (ptrdiff_t c = 0; c < K; c++)
        w_sum += weight[c];
    N(ce_ctx) cx = {target, weight, ignore_index, eps, eps / (double)K, w_sum, scale, loss,
                    grad, K};
    FSM_FOR_ROWS(grad, N(fin_ce_index), &cx)
}

/* q_c = w_c ((1-eps) t_c + eps/K); a q_c of 0 contributes 0 even where x_c = -inf. */
static inline void N(fin_ce_soft)(const N(ce_ctx) *cx, ptrdiff_t i, const T *xr, T *er, T m,
                                  double s)
{
    const ptrdiff_t K = cx->K;
    const double *w = cx->weight;
    const double keep = 1.0 - cx->eps, eps_k = cx->eps_k;
    const T *tr = (const T *)cx->target + i * K;
    double qz = 0.0, big_q = 0.0;
#pragma omp simd reduction(+ : qz, big_q)
    for (ptrdiff_t c = 0; c < K; c++) {
        double q = w[c] * (keep * (double)tr[c] + eps_k);
        double z = (double)(xr[c] - m);
        qz += q != 0.0 ? q * z : 0.0;
        big_q += q;
    }
    cx->loss[i] = big_q * log(s) - qz;
    if (cx->grad) {
        T a = (T)(cx->scale * big_q / s);
        double scale = cx->scale;
#pragma omp simd
        for (ptrdiff_t c = 0; c < K; c++)
            er[c] = er[c] * a - (T)(scale * w[c] * (keep * (double)tr[c] + eps_k));
    }
}

FSM_CLONES void N(fsm_ce_soft)(const T *x, const T *target, const double *weight, double eps,
                               double scale, double *loss, T *grad, ptrdiff_t r0, ptrdiff_t r1,
                               ptrdiff_t K)
{
    N(ce_ctx) cx = {target, weight, 0, eps, eps / (double)K, 0.0, scale, loss, grad, K};
    FSM_FOR_ROWS(grad, N(fin_ce_soft), &cx)
}

#undef N
#undef FSM_FOR_ROWS
#undef FSM_BLOCK
#undef FSM_SHORT_K
