# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""c backend: hand-written C row kernels (rowops.c, rowops_impl.h) behind Cython entry
points: typed memoryviews in, GIL released, rows split over OpenMP threads.

Design
- The front has validated everything (see fastsm/kernels/__init__.py); these entry points
  take ``const`` typed memoryviews (read-only input works), release the GIL and hand
  contiguous row ranges to the C row kernels in rowops.c, where the vectorised loops live
  (OpenMP simd pragmas, gcc target_clones for AVX-512 / AVX2 / baseline).  The cython
  backend (cython_rows.pxi) is the same algorithms written in Cython itself.
- Threads: ``prange(..., schedule='dynamic')`` over row chunks of ~64k elements (see
  ``_CHUNK_ELEMENTS``; 256k for the half kernels, ``_run_half``); problems under ``_MIN_PARALLEL`` elements run on the calling thread
  (an OpenMP fork/join costs more than a 64x128 softmax).  How many threads a call gets
  is the front's choice (fastsm/_parallel.py); this module never starts a team for
  ``nthreads=1``, which is what a forked child is given.
- Per-thread scratch lives on each thread's stack inside the C kernels (short-row blocks
  of 2048 elements), so nothing here allocates; the half-precision kernels (``*_half``)
  allocate one float32 block (32 KiB, or one row) per chunk of rows in C.
- One def entry per kernel.  The ones a small call goes through (softmax, log_softmax,
  logsumexp, ce_index) take ndarrays and check them with NumPy's C macros (type, shape,
  C order, writeable outputs): a fused memoryview signature cost ~1 us a call (the
  fused dispatch ~0.35 us, then a memoryview per array), a tenth of a 64x128 softmax.
  The others keep fused (float/double) memoryview signatures.
- ``count_ignored`` (optional in the contract) checks class-index targets for the front's
  common cross-entropy call in one C loop instead of a NumPy reduction (~1.5 us of a
  small call); ce_index checks them again before any row runs (a vectorised loop over
  n int64s), so no direct call can index out of bounds.
- ``*_cols``: a reduction over an axis that is not last, on the (a, R, b) view of a
  C-contiguous array, in tasks of 256 columns (rowops_impl.h, ``cols``).  1000x512 along
  axis 0, 2 threads, interleaved medians (``python -m benchmarks.ab_columns``): float32
  softmax 0.44 ms against 1.33 ms through the front's transposed copy and 0.56 ms for
  torch; all three ops and both dtypes 2.0-4.7x faster than the transposing path and
  1.1-1.9x torch.
"""

cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t, uint16_t

cnp.import_array()

cdef extern from "rowops.h" nogil:
    void fsm_softmax_f32(const float *x, float *out, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t K)
    void fsm_softmax_f64(const double *x, double *out, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t K)
    void fsm_log_softmax_f32(const float *x, float *out, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t K)
    void fsm_log_softmax_f64(const double *x, double *out, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t K)
    void fsm_logsumexp_f32(const float *x, float *out, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t K)
    void fsm_logsumexp_f64(const double *x, double *out, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t K)
    void fsm_ce_index_f32(const float *x, const int64_t *target, const double *weight,
                          int64_t ignore_index, double eps, double scale, double *loss,
                          float *grad, double z_coef, double *lse, uint8_t *correct,
                          Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t K)
    void fsm_ce_index_f64(const double *x, const int64_t *target, const double *weight,
                          int64_t ignore_index, double eps, double scale, double *loss,
                          double *grad, double z_coef, double *lse, uint8_t *correct,
                          Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t K)
    void fsm_ce_soft_f32(const float *x, const float *target, const double *weight, double eps,
                         double scale, double *loss, float *grad, double z_coef, double *lse,
                         Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t K)
    void fsm_ce_soft_f64(const double *x, const double *target, const double *weight, double eps,
                         double scale, double *loss, double *grad, double z_coef, double *lse,
                         Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t K)
    void fsm_softmax_cols_f32(const float *x, float *out, Py_ssize_t R, Py_ssize_t b,
                              Py_ssize_t j0, Py_ssize_t j1)
    void fsm_softmax_cols_f64(const double *x, double *out, Py_ssize_t R, Py_ssize_t b,
                              Py_ssize_t j0, Py_ssize_t j1)
    void fsm_log_softmax_cols_f32(const float *x, float *out, Py_ssize_t R, Py_ssize_t b,
                                  Py_ssize_t j0, Py_ssize_t j1)
    void fsm_log_softmax_cols_f64(const double *x, double *out, Py_ssize_t R, Py_ssize_t b,
                                  Py_ssize_t j0, Py_ssize_t j1)
    void fsm_logsumexp_cols_f32(const float *x, float *out, Py_ssize_t R, Py_ssize_t b,
                                Py_ssize_t j0, Py_ssize_t j1)
    void fsm_logsumexp_cols_f64(const double *x, double *out, Py_ssize_t R, Py_ssize_t b,
                                Py_ssize_t j0, Py_ssize_t j1)
    void fsm_lse_parts_f32(const float *x, double *m, double *L, Py_ssize_t r0, Py_ssize_t r1,
                           Py_ssize_t K)
    void fsm_lse_parts_f64(const double *x, double *m, double *L, Py_ssize_t r0, Py_ssize_t r1,
                           Py_ssize_t K)
    void fsm_from_lse_parts_f32(const float *x, const double *m, const double *L, float *out,
                                int log_out, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t K)
    void fsm_from_lse_parts_f64(const double *x, const double *m, const double *L, double *out,
                                int log_out, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t K)
    Py_ssize_t fsm_check_targets(const int64_t *t, Py_ssize_t n, int64_t k,
                                 int64_t ignore_index, Py_ssize_t *ignored)
    double fsm_pairwise_sum(const double *a, Py_ssize_t n)
    const char *fsm_isa()
    void fsm_half_convert(const void *src, void *dst, Py_ssize_t n, int kind, int widen,
                          int portable)
    int fsm_rows_half(int op, const uint16_t *x, uint16_t *out, int kind, Py_ssize_t r0,
                      Py_ssize_t r1, Py_ssize_t K)
    int fsm_ce_half(const uint16_t *x, int kind, const int64_t *index, const uint16_t *soft,
                    const double *weight, int64_t ignore_index, double eps, double scale,
                    double *loss, uint16_t *grad, double z_coef, double *lse, uint8_t *correct,
                    Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t K)

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FSM_OPENMP 1
    #else
    #define FSM_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    #endif
    """
    int FSM_OPENMP
    int omp_get_max_threads() nogil

ctypedef fused real:
    float
    double

NAME = "c"
# Measured on the 2-core machine: below ~32k elements one thread beats two (fork/join
# and cache-line traffic dominate); see the closing note of the cython issue.
cdef Py_ssize_t _MIN_PARALLEL = 1 << 15
MIN_PARALLEL = _MIN_PARALLEL  # for the front's thread controller (fastsm/_parallel.py)


cdef inline int _threads_for(Py_ssize_t n, Py_ssize_t k, int nthreads) noexcept nogil:
    if nthreads < 2 or n < 2 or n * k < _MIN_PARALLEL:
        return 1
    return <int>n if n < nthreads else nthreads


cdef enum:
    _SOFTMAX, _LOG_SOFTMAX, _LOGSUMEXP, _LSE_PARTS, _FROM_PARTS, _FROM_PARTS_LOG


cdef inline void _rows(int which, const real *x, real *out, double *m, double *L,
                       Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t k) noexcept nogil:
    # out: (n, k), or (n,) for logsumexp, unused for lse_parts; m, L: (n,) for the parts
    if real is float:
        if which == _SOFTMAX:
            fsm_softmax_f32(x, out, r0, r1, k)
        elif which == _LOG_SOFTMAX:
            fsm_log_softmax_f32(x, out, r0, r1, k)
        elif which == _LOGSUMEXP:
            fsm_logsumexp_f32(x, out, r0, r1, k)
        elif which == _LSE_PARTS:
            fsm_lse_parts_f32(x, m, L, r0, r1, k)
        else:
            fsm_from_lse_parts_f32(x, m, L, out, which == _FROM_PARTS_LOG, r0, r1, k)
    else:
        if which == _SOFTMAX:
            fsm_softmax_f64(x, out, r0, r1, k)
        elif which == _LOG_SOFTMAX:
            fsm_log_softmax_f64(x, out, r0, r1, k)
        elif which == _LOGSUMEXP:
            fsm_logsumexp_f64(x, out, r0, r1, k)
        elif which == _LSE_PARTS:
            fsm_lse_parts_f64(x, m, L, r0, r1, k)
        else:
            fsm_from_lse_parts_f64(x, m, L, out, which == _FROM_PARTS_LOG, r0, r1, k)


# Rows are claimed in chunks of ~64k elements (schedule="dynamic"), not one slab per
# thread: a thread descheduled by another program then delays one chunk, not half the
# call.  4096x1000 float32 softmax, 2 threads, medians of 60 interleaved calls: idle static
# 1.66-1.68 ms, chunks of 16k/64k/256k elements 1.58-1.60/1.55-1.60/1.57-1.62 ms; beside a
# 2-thread torch loop static 6.07-6.18, 64k chunks 5.93-6.09 (serial 8.06-8.43).
cdef Py_ssize_t _CHUNK_ELEMENTS = 1 << 16


cdef inline Py_ssize_t _chunk_rows(Py_ssize_t n, Py_ssize_t k, int nt) noexcept nogil:
    cdef Py_ssize_t per = (n + nt - 1) // nt
    cdef Py_ssize_t rows = _CHUNK_ELEMENTS // k
    if rows < 1:
        rows = 1
    return rows if rows < per else per


cdef void _run(int which, const real *x, real *out, double *m, double *L, Py_ssize_t n,
               Py_ssize_t k, int nthreads) noexcept nogil:
    cdef int nt = _threads_for(n, k, nthreads)
    cdef Py_ssize_t c, per, r0, r1, nchunks
    if nt == 1:
        _rows(which, x, out, m, L, 0, n, k)
        return
    per = _chunk_rows(n, k, nt)
    nchunks = (n + per - 1) // per
    for c in prange(nchunks, num_threads=nt, schedule="dynamic"):
        r0 = c * per
        r1 = r0 + per
        if r1 > n:
            r1 = n
        _rows(which, x, out, m, L, r0, r1, k)


cdef int _rows_type(cnp.ndarray x) except -1:
    """NPY_FLOAT or NPY_DOUBLE for a C-contiguous 2-D float32/float64 ``x`` with classes
    wherever it has rows; else a TypeError / ValueError.  The front never hands over
    anything else: these checks keep a direct call from reading out of bounds."""
    cdef int t = cnp.PyArray_TYPE(x)
    if t != cnp.NPY_FLOAT and t != cnp.NPY_DOUBLE:
        raise TypeError(f"x has dtype {x.dtype}; expected float32 or float64")
    if cnp.PyArray_NDIM(x) != 2 or not cnp.PyArray_IS_C_CONTIGUOUS(x):
        raise ValueError("x must be a C-contiguous (rows, classes) array")
    if cnp.PyArray_DIMS(x)[0] and not cnp.PyArray_DIMS(x)[1]:
        raise ValueError("x has rows of no classes")
    return t


cdef int _check(object a, str name, int t, int ndim, cnp.npy_intp d0, cnp.npy_intp d1,
                bint writes) except -1:
    """``a`` is a C-contiguous ndarray of type number ``t`` and shape (d0,) or (d0, d1),
    writeable if ``writes``; else a TypeError / ValueError naming it."""
    if not isinstance(a, cnp.ndarray):  # subclasses too (np.memmap out=, as before)
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != t:
        raise TypeError(f"{name} has dtype {arr.dtype}; expected "
                        f"{cnp.PyArray_DescrFromType(t)}")
    cdef cnp.npy_intp *d = cnp.PyArray_DIMS(arr)
    if (cnp.PyArray_NDIM(arr) != ndim or d[0] != d0 or (ndim == 2 and d[1] != d1)
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr)):
        raise ValueError(f"{name} has shape {(<object>arr).shape}; expected a C-contiguous "
                         f"{(d0, d1)[:ndim]}")
    if writes and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name} is read-only")
    return 0


cdef _elementwise(int which, cnp.ndarray x, object out, int out_ndim, int nthreads):
    cdef int t = _rows_type(x)
    cdef cnp.npy_intp n = cnp.PyArray_DIMS(x)[0], k = cnp.PyArray_DIMS(x)[1]
    _check(out, "out", t, out_ndim, n, k, True)
    cdef void *px = cnp.PyArray_DATA(x)
    cdef void *po = cnp.PyArray_DATA(<cnp.ndarray>out)
    with nogil:
        if t == cnp.NPY_FLOAT:
            _run(which, <const float *>px, <float *>po, NULL, NULL, n, k, nthreads)
        else:
            _run(which, <const double *>px, <double *>po, NULL, NULL, n, k, nthreads)


def softmax(cnp.ndarray x not None, out, int nthreads=1):
    """out[r, c] = exp(x[r, c] - m_r) / sum_j exp(x[r, j] - m_r)."""
    _elementwise(_SOFTMAX, x, out, 2, nthreads)


def log_softmax(cnp.ndarray x not None, out, int nthreads=1):
    """out[r, c] = (x[r, c] - m_r) - log(sum_j exp(x[r, j] - m_r))."""
    _elementwise(_LOG_SOFTMAX, x, out, 2, nthreads)


def logsumexp(cnp.ndarray x not None, out, int nthreads=1):
    """out[r] = m_r + log(sum_j exp(x[r, j] - m_r))."""
    _elementwise(_LOGSUMEXP, x, out, 1, nthreads)


# ---- reductions over an axis that is not last: (a, R, b) C-contiguous, reduced over R
def lse_parts(const real[:, ::1] x, double[::1] m, double[::1] L, int nthreads=1):
    """m[r] = max_j x[r, j], L[r] = log(sum_j exp(x[r, j] - m[r]))."""
    with nogil:
        _run(_LSE_PARTS, &x[0, 0], <real *>NULL, &m[0], &L[0], x.shape[0], x.shape[1],
             nthreads)


def from_lse_parts(const real[:, ::1] x, const double[::1] m, const double[::1] L,
                   real[:, ::1] out, bint log, int nthreads=1):
    """out[r, c] = (x[r, c] - m[r]) - L[r], or its exp."""
    with nogil:
        _run(_FROM_PARTS_LOG if log else _FROM_PARTS, &x[0, 0], &out[0, 0], <double *>&m[0],
             <double *>&L[0], x.shape[0], x.shape[1], nthreads)


cdef inline void _cols3(int which, const real *x, real *out, Py_ssize_t R, Py_ssize_t b,
                        Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    if real is float:
        if which == 0:
            fsm_softmax_cols_f32(x, out, R, b, j0, j1)
        elif which == 1:
            fsm_log_softmax_cols_f32(x, out, R, b, j0, j1)
        else:
            fsm_logsumexp_cols_f32(x, out, R, b, j0, j1)
    else:
        if which == 0:
            fsm_softmax_cols_f64(x, out, R, b, j0, j1)
        elif which == 1:
            fsm_log_softmax_cols_f64(x, out, R, b, j0, j1)
        else:
            fsm_logsumexp_cols_f64(x, out, R, b, j0, j1)


# Column tasks of 256 columns (the C kernel's tile) for each of the a slabs.
cdef Py_ssize_t _COL_TASK = 256


cdef void _run_cols(int which, const real *x, real *out, Py_ssize_t a, Py_ssize_t R,
                    Py_ssize_t b, Py_ssize_t out_slab, int nthreads) noexcept nogil:
    cdef Py_ssize_t per_slab = (b + _COL_TASK - 1) // _COL_TASK
    cdef Py_ssize_t ntasks = a * per_slab, task, p, j0, j1
    cdef int nt = _threads_for(ntasks, R * _COL_TASK, nthreads)
    if nt == 1:
        for p in range(a):
            _cols3(which, x + p * R * b, out + p * out_slab, R, b, 0, b)
        return
    for task in prange(ntasks, num_threads=nt, schedule="dynamic"):
        p = task // per_slab
        j0 = (task % per_slab) * _COL_TASK
        j1 = j0 + _COL_TASK
        if j1 > b:
            j1 = b
        _cols3(which, x + p * R * b, out + p * out_slab, R, b, j0, j1)


def softmax_cols(const real[:, :, ::1] x, real[:, :, ::1] out, int nthreads=1):
    """softmax over axis 1 of a C-contiguous (a, R, b) array, without a transposed copy."""
    with nogil:
        _run_cols(0, &x[0, 0, 0], &out[0, 0, 0], x.shape[0], x.shape[1], x.shape[2],
                  x.shape[1] * x.shape[2], nthreads)


def log_softmax_cols(const real[:, :, ::1] x, real[:, :, ::1] out, int nthreads=1):
    """log_softmax over axis 1 of a C-contiguous (a, R, b) array."""
    with nogil:
        _run_cols(1, &x[0, 0, 0], &out[0, 0, 0], x.shape[0], x.shape[1], x.shape[2],
                  x.shape[1] * x.shape[2], nthreads)


def logsumexp_cols(const real[:, :, ::1] x, real[:, ::1] out, int nthreads=1):
    """logsumexp over axis 1 of a C-contiguous (a, R, b) array into out (a, b)."""
    with nogil:
        _run_cols(2, &x[0, 0, 0], &out[0, 0], x.shape[0], x.shape[1], x.shape[2],
                  x.shape[2], nthreads)


cdef struct _CeArgs:
    const int64_t *index   # class-index targets, or NULL
    const void *soft       # probability targets (real, (n, K)), or NULL
    const double *w
    int64_t ign
    double eps, scale, z_coef
    double *loss
    void *grad             # real (n, K) or NULL
    double *lse            # (n,) or NULL
    uint8_t *correct       # (n,) or NULL (index targets only)


cdef inline void _ce_args(_CeArgs *a, const int64_t *index, const void *soft, const double *w,
                          int64_t ign, double eps, double scale, double z_coef, double *loss,
                          void *grad, double *lse, uint8_t *correct) noexcept:
    a.index, a.soft, a.w, a.ign = index, soft, w, ign
    a.eps, a.scale, a.z_coef, a.loss = eps, scale, z_coef, loss
    a.grad, a.lse, a.correct = grad, lse, correct


cdef inline void _ce_rows(const real *x, const _CeArgs *a, Py_ssize_t r0, Py_ssize_t r1,
                          Py_ssize_t k) noexcept nogil:
    if real is float:
        if a.index != NULL:
            fsm_ce_index_f32(x, a.index, a.w, a.ign, a.eps, a.scale, a.loss, <float *>a.grad,
                             a.z_coef, a.lse, a.correct, r0, r1, k)
        else:
            fsm_ce_soft_f32(x, <const float *>a.soft, a.w, a.eps, a.scale, a.loss,
                            <float *>a.grad, a.z_coef, a.lse, r0, r1, k)
    else:
        if a.index != NULL:
            fsm_ce_index_f64(x, a.index, a.w, a.ign, a.eps, a.scale, a.loss, <double *>a.grad,
                             a.z_coef, a.lse, a.correct, r0, r1, k)
        else:
            fsm_ce_soft_f64(x, <const double *>a.soft, a.w, a.eps, a.scale, a.loss,
                            <double *>a.grad, a.z_coef, a.lse, r0, r1, k)


cdef void _run_ce(const real *x, const _CeArgs *a, Py_ssize_t n, Py_ssize_t k,
                  int nthreads) noexcept nogil:
    cdef int nt = _threads_for(n, k, nthreads)
    cdef Py_ssize_t c, per, r0, r1
    if nt == 1:
        _ce_rows(x, a, 0, n, k)
        return
    per = _chunk_rows(n, k, nt)
    for c in prange((n + per - 1) // per, num_threads=nt, schedule="dynamic"):
        r0 = c * per
        r1 = r0 + per
        if r1 > n:
            r1 = n
        if r0 < r1:
            _ce_rows(x, a, r0, r1, k)


cdef int _check_targets(const int64_t *t, Py_ssize_t n, int64_t k, int64_t ignore_index,
                        Py_ssize_t *ignored) except -1:
    cdef Py_ssize_t bad
    with nogil:
        bad = fsm_check_targets(t, n, k, ignore_index, ignored)
    if bad >= 0:
        raise ValueError(f"target value {t[bad]} at index {bad} is out of range: expected a "
                         f"class index in [0, {k}) or ignore_index={ignore_index}")
    return 0


def count_ignored(target, Py_ssize_t k, int64_t ignore_index):
    """How many of the int64 class-index ``target`` (n,) equal ``ignore_index``, once every
    other is in [0, k); else a ValueError naming the first that is not (the front's
    message).  Optional in the kernel contract: the front's common cross-entropy call
    checks its targets here instead of by a NumPy reduction (~1.5 us of a small call)."""
    if not isinstance(target, cnp.ndarray):
        raise TypeError(f"target must be a numpy.ndarray, got {type(target).__name__}")
    cdef cnp.ndarray t = <cnp.ndarray>target
    _check(t, "target", cnp.NPY_INT64, 1, cnp.PyArray_DIMS(t)[0], 0, False)
    cdef Py_ssize_t ignored
    _check_targets(<const int64_t *>cnp.PyArray_DATA(t), cnp.PyArray_DIMS(t)[0], k,
                   ignore_index, &ignored)
    return ignored


cdef int _ce_index_args(_CeArgs *a, cnp.npy_intp n, cnp.npy_intp k, int grad_type, target,
                        weight, int64_t ignore_index, double smoothing, double scale, loss,
                        grad, double z_coef, lse, correct) except -1:
    """ce_index's and ce_index_half's arrays checked (the gradient's type number grad_type;
    the targets before any row runs: a direct call with a bad one gets the front's
    ValueError, never a read out of bounds) and gathered in ``a``."""
    _check(target, "target", cnp.NPY_INT64, 1, n, 0, False)
    _check(weight, "weight", cnp.NPY_DOUBLE, 1, k, 0, False)
    _check(loss, "loss", cnp.NPY_DOUBLE, 1, n, 0, True)
    if grad is not None:
        _check(grad, "grad", grad_type, 2, n, k, True)
    if lse is not None:
        _check(lse, "lse", cnp.NPY_DOUBLE, 1, n, 0, True)
    if correct is not None:
        _check(correct, "correct", cnp.NPY_UINT8, 1, n, 0, True)
    cdef const int64_t *pt = <const int64_t *>cnp.PyArray_DATA(<cnp.ndarray>target)
    cdef Py_ssize_t ignored
    _check_targets(pt, n, k, ignore_index, &ignored)
    _ce_args(a, pt, NULL, <const double *>cnp.PyArray_DATA(<cnp.ndarray>weight),
             ignore_index, smoothing, scale, z_coef,
             <double *>cnp.PyArray_DATA(<cnp.ndarray>loss),
             NULL if grad is None else cnp.PyArray_DATA(<cnp.ndarray>grad),
             NULL if lse is None else <double *>cnp.PyArray_DATA(<cnp.ndarray>lse),
             NULL if correct is None else <uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>correct))
    return 0


def ce_index(cnp.ndarray x not None, target, weight, int64_t ignore_index, double smoothing,
             double scale, loss, grad, double z_coef, lse, correct, int nthreads=1):
    """Per-row cross-entropy against class indices; see fastsm/kernels/__init__.py.  The
    targets are checked again here (the front has), before any row runs: a direct call
    with a bad one gets the front's ValueError, never a read out of bounds.  Returns the
    sum of ``loss`` (pairwise; optional in the contract: the front's reduction then needs
    no NumPy call, ~1 us of a 64x128 call)."""
    cdef int t = _rows_type(x)
    cdef cnp.npy_intp n = cnp.PyArray_DIMS(x)[0], k = cnp.PyArray_DIMS(x)[1]
    cdef _CeArgs a
    _ce_index_args(&a, n, k, t, target, weight, ignore_index, smoothing, scale, loss, grad,
                   z_coef, lse, correct)
    cdef void *px = cnp.PyArray_DATA(x)
    cdef double total
    with nogil:
        if t == cnp.NPY_FLOAT:
            _run_ce(<const float *>px, &a, n, k, nthreads)
        else:
            _run_ce(<const double *>px, &a, n, k, nthreads)
        total = fsm_pairwise_sum(a.loss, n)
    return total


def ce_soft(const real[:, ::1] x, const real[:, ::1] target, const double[::1] weight,
            double smoothing, double scale, double[::1] loss, real[:, ::1] grad,
            double z_coef, double[::1] lse, int nthreads=1):
    """Per-row cross-entropy against probabilities; see fastsm/kernels/__init__.py."""
    cdef _CeArgs a
    _ce_args(&a, NULL, <const void *>&target[0, 0], &weight[0], 0, smoothing, scale, z_coef,
             &loss[0], NULL if grad is None else <void *>&grad[0, 0],
             NULL if lse is None else &lse[0], NULL)
    with nogil:
        _run_ce(&x[0, 0], &a, x.shape[0], x.shape[1], nthreads)


# ---- float16 / bfloat16 (optional in the kernel contract): 16-bit storage passed as
# uint16 views, ``kind`` 0 = float16, 1 = bfloat16; computed in float32 block by block
# (rowops.c).  Same chunks and threads as the float32 kernels.
HALF_KINDS = {"float16": 0, "bfloat16": 1}


cdef struct _HalfArgs:
    int op                 # 0 softmax, 1 log_softmax, 2 logsumexp, 3 cross-entropy
    int kind
    const uint16_t *x
    uint16_t *out          # (n, K), (n,) for logsumexp, unused for cross-entropy
    Py_ssize_t k
    const _CeArgs *ce


cdef int _half_rows(const _HalfArgs *h, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef const _CeArgs *a = h.ce
    if h.op != 3:
        return fsm_rows_half(h.op, h.x, h.out, h.kind, r0, r1, h.k)
    return fsm_ce_half(h.x, h.kind, a.index, <const uint16_t *>a.soft, a.w, a.ign, a.eps,
                       a.scale, a.loss, <uint16_t *>a.grad, a.z_coef, a.lse, a.correct,
                       r0, r1, h.k)


cdef int _run_half(const _HalfArgs *h, Py_ssize_t n, int nthreads) noexcept nogil:
    """0, or how many chunks found no memory for their float32 block."""
    cdef int nt = _threads_for(n, h.k, nthreads)
    cdef Py_ssize_t c, per, r0, r1
    cdef int bad = 0
    if nt == 1:
        return _half_rows(h, 0, n)
    # chunks of 4x the elements: each starts with a span pass of its own over its first
    # row(s) and a buffer, and the fused half rows run ~1.7x float32's elements/s.  2 threads,
    # kernels against 64k-element chunks: 4096x1000 0.96-0.98, 512x32000 cross-entropy
    # 0.78-0.82 (loss and gradient), 2048x128 0.98-0.99 (float16, bfloat16; float32's row
    # kernels with 4x chunks 0.99-1.00 at 4096x1000, so theirs stay).  Beside a busy 2-thread
    # torch loop, float16 4096x1000: 1.08-1.17x the 1-thread time (bar 1.3), as before
    per = _chunk_rows(n, (h.k + 3) // 4, nt)
    for c in prange((n + per - 1) // per, num_threads=nt, schedule="dynamic"):
        r0 = c * per
        r1 = r0 + per
        if r1 > n:
            r1 = n
        bad += _half_rows(h, r0, r1) != 0
    return bad


cdef _half(int op, const uint16_t *x, uint16_t *out, int kind, Py_ssize_t n, Py_ssize_t k,
           const _CeArgs *ce, int nthreads):
    cdef _HalfArgs h
    cdef int bad
    h.op, h.kind, h.x, h.out, h.k, h.ce = op, kind, x, out, k, ce
    with nogil:
        bad = _run_half(&h, n, nthreads)
    if bad:
        raise MemoryError("fastsm: no memory for a float32 block of the half-precision rows")


cdef int _half_bits(cnp.ndarray x, int kind) except -1:
    """A direct call's checks of half rows (the front has made them): ``x`` a C-contiguous
    2-D uint16 array with classes wherever it has rows, ``kind`` 0 or 1.  NumPy's C macros:
    memoryview arguments cost the 4096x1000 half calls 45-60 us in the front (their steps
    run with caches the kernel has swept), against 27 us for float32's entry points."""
    if kind != 0 and kind != 1:
        raise ValueError(f"kind must be 0 (float16) or 1 (bfloat16), got {kind}")
    if (cnp.PyArray_TYPE(x) != cnp.NPY_UINT16 or cnp.PyArray_NDIM(x) != 2
            or not cnp.PyArray_IS_C_CONTIGUOUS(x)):
        raise TypeError("x must be a C-contiguous (rows, classes) uint16 array of half bits")
    if cnp.PyArray_DIMS(x)[0] and not cnp.PyArray_DIMS(x)[1]:
        raise ValueError("x has rows of no classes")
    return 0


cdef _half_elementwise(int op, cnp.ndarray x, object out, int out_ndim, int kind,
                       int nthreads):
    _half_bits(x, kind)
    cdef cnp.npy_intp n = cnp.PyArray_DIMS(x)[0], k = cnp.PyArray_DIMS(x)[1]
    _check(out, "out", cnp.NPY_UINT16, out_ndim, n, k, True)
    _half(op, <const uint16_t *>cnp.PyArray_DATA(x),
          <uint16_t *>cnp.PyArray_DATA(<cnp.ndarray>out), kind, n, k, NULL, nthreads)


def softmax_half(cnp.ndarray x not None, out, int kind, int nthreads=1):
    """softmax of float16 (kind 0) / bfloat16 (kind 1) rows given as their bits."""
    _half_elementwise(0, x, out, 2, kind, nthreads)


def log_softmax_half(cnp.ndarray x not None, out, int kind, int nthreads=1):
    _half_elementwise(1, x, out, 2, kind, nthreads)


def logsumexp_half(cnp.ndarray x not None, out, int kind, int nthreads=1):
    _half_elementwise(2, x, out, 1, kind, nthreads)


def ce_index_half(cnp.ndarray x not None, int kind, target, weight, int64_t ignore_index,
                  double smoothing, double scale, loss, grad, double z_coef, lse, correct,
                  int nthreads=1):
    """ce_index on float16 (kind 0) / bfloat16 (kind 1) logits given as their bits (uint16),
    computed in float32, the gradient in the same type.  Checked as ce_index (the targets
    before any row runs; _half_bits); returns the sum of ``loss``."""
    _half_bits(x, kind)
    cdef cnp.npy_intp n = cnp.PyArray_DIMS(x)[0], k = cnp.PyArray_DIMS(x)[1]
    cdef _CeArgs a
    _ce_index_args(&a, n, k, cnp.NPY_UINT16, target, weight, ignore_index, smoothing, scale,
                   loss, grad, z_coef, lse, correct)
    _half(3, <const uint16_t *>cnp.PyArray_DATA(x), NULL, kind, n, k, &a, nthreads)
    return fsm_pairwise_sum(a.loss, n)


def ce_soft_half(const uint16_t[:, ::1] x, int kind, const uint16_t[:, ::1] target,
                 const double[::1] weight, double smoothing, double scale, double[::1] loss,
                 uint16_t[:, ::1] grad, double z_coef, double[::1] lse, int nthreads=1):
    """ce_soft on float16 / bfloat16 logits and probabilities, computed in float32."""
    cdef _CeArgs a
    _ce_args(&a, NULL, <const void *>&target[0, 0], &weight[0], 0, smoothing, scale, z_coef,
             &loss[0], NULL if grad is None else <void *>&grad[0, 0],
             NULL if lse is None else &lse[0], NULL)
    _half(3, &x[0, 0], NULL, kind, x.shape[0], x.shape[1], &a, nthreads)


def half_widen(const uint16_t[::1] half, float[::1] single, int kind, bint portable=False):
    """single[i] = half[i] as float32 (exact): the conversion the half kernels read with
    (``portable``: the integer code, not the CPU's float16 instructions), for the tests."""
    with nogil:
        fsm_half_convert(&half[0], &single[0], half.shape[0], kind, 1, portable)


def half_round(const float[::1] single, uint16_t[::1] half, int kind, bint portable=False):
    """half[i] = single[i] rounded to nearest even: the conversion the half kernels write
    with."""
    with nogil:
        fsm_half_convert(&single[0], &half[0], half.shape[0], kind, 0, portable)


def info():
    return {
        "openmp": bool(FSM_OPENMP),
        "omp_max_threads": omp_get_max_threads(),
        "exp": "own vectorised exp (Cody-Waite + polynomial), runtime ISA: "
               + fsm_isa().decode(),
        "parallel_threshold_elements": _MIN_PARALLEL,
    }
