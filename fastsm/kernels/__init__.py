"""Kernel modules, one per backend.  The contract each module fulfils:

The front (``fastsm._api``) has already validated everything: ``x`` is a 2-D C-contiguous
float32 or float64 array of shape ``(n, K)`` with ``n >= 1`` and ``K >= 1``; every output is
C-contiguous, of the right shape and dtype; softmax's and log_softmax's ``out`` may alias
``x`` exactly (never partially), the cross-entropy gradient never (its rows are written
before the row's logits are read again).
Kernels never allocate outputs and never check indices a second time.

Each module also names itself (``NAME``) and says from how many elements its own threads
may pay (``MIN_PARALLEL``, or None for a serial-only backend).  ``nthreads`` is the
front's decision (``fastsm/_parallel.py``: adaptive, within the process's core budget,
1 in a child forked after native threads ran); a kernel uses at most that many threads.

    softmax(x, out, nthreads)              out[r, c] = exp(x[r, c] - lse_r)
    log_softmax(x, out, nthreads)          out[r, c] = x[r, c] - lse_r
    logsumexp(x, out, nthreads)            out[r]    = lse_r              (out: shape (n,))
    ce_index(x, target, weight, ignore_index, smoothing, scale, loss, grad, nthreads)
    ce_soft(x, target, weight, smoothing, scale, loss, grad, nthreads)
    lse_parts(x, m, L, nthreads)           m[r] = m_r, L[r] = lse_r - m_r  (float64 (n,) each;
                                           a non-finite m_r: L[r] = lse_r)
    from_lse_parts(x, m, L, out, log, nthreads)
                                           out[r, c] = (x[r, c] - m[r]) - L[r], or its exp
                                           (m, L: float64 (n,), computed in x.dtype; NaN rows
                                           where m[r] is not finite or L[r] is NaN)

with ``lse_r = m_r + log(sum_c exp(x[r, c] - m_r))``, ``m_r = max_c x[r, c]``, where the log
term is ``log1p`` of the sum without one maximal element's 1 wherever that sum is below 1:
results far below 1 (lse of [0, -40], the top log-probability of a confident row, its
cross-entropy) keep 4 ulp of relative accuracy (tests/checks.py).  Rows holding
NaN or +inf, and rows that are all -inf, give NaN in softmax/log_softmax; logsumexp gives
NaN, +inf and -inf for them respectively.

Optional, for one reduced axis that is not last (the front uses them where a module has
them, else it copies the axis last): ``x`` a C-contiguous ``(a, R, b)`` float32/float64
array with ``b >= 16``, reduced over its middle axis, with no transposed copy:

    softmax_cols(x, out, nthreads)         out: (a, R, b)
    log_softmax_cols(x, out, nthreads)     out: (a, R, b)
    logsumexp_cols(x, out, nthreads)       out: (a, b)

(``COLS_DTYPES``, optional: the dtype names those take, if not both.)

Optional, for 16-bit floats (the front uses them where a module has them, else it computes
on a float32 copy): ``HALF_KINDS``, a dict {dtype name: code} ("float16", "bfloat16"), and
the kernels above on the data's bits as uint16 arrays, computed in float32, each result
rounded to nearest even:

    softmax_half(x, out, code, nthreads)   log_softmax_half(...)   logsumexp_half(...)
    ce_index_half(x, code, target, weight, ignore_index, smoothing, scale, loss, grad,
                  z_coef, lse, correct, nthreads)
    ce_soft_half(x, code, target, weight, smoothing, scale, loss, grad, z_coef, lse,
                 nthreads)                (target: the same 16-bit type as x; grad: it too)

(ce_index_half may return the sum of ``loss``, as ce_index.)

Optional (absent or None), for the front's common cross-entropy call: ``count_ignored(target, K,
ignore_index)``: how many of the int64 (n,) targets equal ignore_index once every other is
in [0, K), else a ValueError naming the first that is not (the front's message); the
front then skips its own NumPy check of the targets.  Where a module has no
``count_ignored``, optional too: ``ce_index_plain(x, target, scale, loss, grad, nthreads)``,
ce_index where the front's check found every target a class (none ignored), with unit
weights, no smoothing, no z-loss, no lse and no accuracy asked; the front calls it only
serially (nthreads 1: ``MIN_PARALLEL`` None, or fewer elements than it).  The registry
sets each of these two that a module lacks to None.

Cross-entropy, per row r (``target``: int64 (n,) for ce_index, already in [0, K) or equal
to ignore_index; x.dtype (n, K) probabilities for ce_soft; ``weight``: float64 (K,);
``loss``: float64 (n,); ``grad``: None or x.dtype (n, K)):

    q_c  = (1 - eps) * w_y * [c == y] + eps / K * w_c        (ce_index, y = target[r])
    q_c  = w_c * ((1 - eps) * t_c + eps / K)                   (ce_soft)
    loss[r]    = sum_c q_c * (lse_r - x[r, c])   (a term with q_c == 0 is 0, even at x = -inf)
    grad[r, c] = scale * (softmax(x)[r, c] * Q_r - q_c),   Q_r = sum_c q_c
    ignored rows (ce_index, y == ignore_index): loss 0 and a zero gradient row.
    ce_index may return the sum of ``loss`` (a float, as accurate as NumPy's pairwise sum),
    or None; the front then sums it itself.
"""
