/* Row kernels of the cython backend: plain C so the hot loops vectorise.
 *
 * Each function processes rows [r0, r1) of C-contiguous (rows, K) data; the Cython module
 * (cython_kernels.pyx) validates nothing more and splits rows over OpenMP threads.
 * See rowops.c for the design notes.
 */
#ifndef FASTSM_ROWOPS_H
#define FASTSM_ROWOPS_H

#include <stddef.h>
#include <stdint.h>

#define FSM_DECLARE(T, SFX)                                                                \
    void fsm_softmax_##SFX(const T *x, T *out, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K);     \
    void fsm_log_softmax_##SFX(const T *x, T *out, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K); \
    void fsm_logsumexp_##SFX(const T *x, T *out, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K);   \
    void fsm_ce_index_##SFX(const T *x, const int64_t *target, const double *weight,          \
                            int64_t ignore_index, double eps, double scale, double *loss,     \
                            T *grad, double z_coef, double *lse, uint8_t *correct,            \
                            ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K);                         \
    void fsm_ce_soft_##SFX(const T *x, const T *target, const double *weight, double eps,     \
                           double scale, double *loss, T *grad, double z_coef, double *lse,   \
                           ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K);                         \
    void fsm_lse_parts_##SFX(const T *x, double *m, double *L, ptrdiff_t r0, ptrdiff_t r1,   \
                             ptrdiff_t K);                                                  \
    void fsm_from_lse_parts_##SFX(const T *x, const double *m, const double *L, T *out,      \
                                  int log_out, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K);     \
    /* columns [j0, j1) of a C-contiguous (R, b) slab, reduced over its R rows */            \
    void fsm_softmax_cols_##SFX(const T *x, T *out, ptrdiff_t R, ptrdiff_t b, ptrdiff_t j0,  \
                                ptrdiff_t j1);                                               \
    void fsm_log_softmax_cols_##SFX(const T *x, T *out, ptrdiff_t R, ptrdiff_t b,            \
                                    ptrdiff_t j0, ptrdiff_t j1);                             \
    void fsm_logsumexp_cols_##SFX(const T *x, T *out, ptrdiff_t R, ptrdiff_t b, ptrdiff_t j0, \
                                  ptrdiff_t j1);

FSM_DECLARE(float, f32)
FSM_DECLARE(double, f64)

/* float16 / bfloat16 storage, float32 compute (rowops.c): rows [r0, r1) of 16-bit data
 * through the float32 kernels a block at a time.  0, or -1 when out of memory. */
enum { FSM_F16 = 0, FSM_BF16 = 1 };
enum { FSM_HALF_SOFTMAX = 0, FSM_HALF_LOG_SOFTMAX = 1, FSM_HALF_LOGSUMEXP = 2 };
int fsm_rows_half(int op, const uint16_t *x, uint16_t *out, int kind, ptrdiff_t r0,
                  ptrdiff_t r1, ptrdiff_t K);
/* index targets (soft NULL) or probability targets in the same half type (index NULL);
 * grad NULL or (n, K) half; everything else as fsm_ce_index_f32 / fsm_ce_soft_f32 */
int fsm_ce_half(const uint16_t *x, int kind, const int64_t *index, const uint16_t *soft,
                const double *weight, int64_t ignore_index, double eps, double scale,
                double *loss, uint16_t *grad, double z_coef, double *lse, uint8_t *correct,
                ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K);
/* n values: half -> float32 (widen) or float32 -> half, rounded to nearest even; portable:
 * the integer code even where the CPU converts float16 itself (for the tests) */
void fsm_half_convert(const void *src, void *dst, ptrdiff_t n, int kind, int widen,
                      int portable);

/* -1 if every t[i] is in [0, k) or equal to ignore_index (how many are: *ignored), else
 * the first i where not. */
ptrdiff_t fsm_check_targets(const int64_t *t, ptrdiff_t n, int64_t k, int64_t ignore_index,
                            ptrdiff_t *ignored);
/* sum of a[:n], pairwise (error O(log n) ulp). */
double fsm_pairwise_sum(const double *a, ptrdiff_t n);

/* Which instruction set the dispatcher picked at load time (for show_config). */
const char *fsm_isa(void);

#endif
