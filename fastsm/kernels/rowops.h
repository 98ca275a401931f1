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

/* Which instruction set the dispatcher picked at load time (for show_config). */
const char *fsm_isa(void);

#endif
