"""Comparison helpers: the accuracy bar, applied the same way to every backend."""

from __future__ import annotations

import math

import numpy as np

from . import oracle

RTOL = {np.dtype(np.float32): 3e-6, np.dtype(np.float64): 5e-15, np.dtype(np.float16): 1e-3}
LOSS_RTOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-13, np.dtype(np.float16): 1e-3}
GRAD_RTOL = {np.dtype(np.float32): 4e-6, np.dtype(np.float64): 1e-14, np.dtype(np.float16): 1e-3}


def _special_positions_match(actual, ref, what):
    a_nan, r_nan = np.isnan(actual), np.isnan(ref)
    assert np.array_equal(a_nan, r_nan), f"{what}: NaN at {np.argwhere(a_nan != r_nan)[:5].tolist()}"
    a_inf = np.where(np.isinf(actual), np.sign(actual), 0)
    r_inf = np.where(np.isinf(ref), np.sign(ref), 0)
    assert np.array_equal(a_inf, r_inf.astype(a_inf.dtype)), f"{what}: inf mismatch"


def max_rel_error(actual, ref, floor):
    """max |a - r| / max(|r|, floor) over finite reference entries."""
    actual = np.asarray(actual, dtype=np.longdouble)
    ref = np.asarray(ref, dtype=np.longdouble)
    fin = np.isfinite(ref)
    if not fin.any():
        return 0.0
    err = np.abs(actual[fin] - ref[fin]) / np.maximum(np.abs(ref[fin]), floor)
    return float(err.max())


def conditioning(ref, dtype):
    """eps * |log p|: the relative error any method working in ``dtype`` inherits from
    rounding x_i - m (|x_i - m| <= |log p_i|; exp amplifies an absolute error of its
    argument into the same relative error of its value).  NumPy's own exp(x - max) / sum
    shows it: 1.5e-14 on float64 logits of scale 30, 4.1e-6 on float32."""
    with np.errstate(divide="ignore"):
        return np.finfo(dtype).eps * np.abs(np.log(np.abs(ref)))


def assert_probabilities(actual, ref, dtype, what):
    """Relative error within RTOL + eps |log p| (see ``conditioning``); results below the
    smallest normal count as exact."""
    _special_positions_match(actual, ref, what)
    dtype = np.dtype(dtype)
    ref = np.asarray(ref, np.longdouble)
    actual = np.asarray(actual, np.longdouble)
    ref_rounded_away = np.abs(ref) < np.finfo(dtype).tiny
    fin = np.isfinite(ref) & ~ref_rounded_away
    err = np.abs(actual[fin] - ref[fin]) / np.abs(ref[fin])
    bar = RTOL[dtype] + conditioning(ref[fin], dtype)
    if err.size:
        worst = int(np.argmax(err - bar))
        assert (err <= bar).all(), (
            f"{what}: relative error {float(err[worst]):.3g} > {float(bar[worst]):.3g} "
            f"(RTOL {RTOL[dtype]:.0e} + eps |log p|, p = {float(ref[fin][worst]):.3g})")
    tiny_err = np.abs(actual[ref_rounded_away] - ref[ref_rounded_away])
    assert (tiny_err <= 2 * np.finfo(dtype).tiny).all(), f"{what}: subnormal error"


def in_range(ref, dtype):
    """``ref`` with values beyond ``dtype``'s range replaced by the +-inf they round to
    (float16: a log-probability below -65504 is -inf there)."""
    ref = np.asarray(ref)
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = ref.astype(dtype)
    return np.where(np.isfinite(rounded), ref, rounded)


ULPS = 4  # the bar for log-domain results (log_softmax, logsumexp, the CE loss)


def ulp(ref, dtype):
    """The spacing of ``dtype`` at |ref| (for 0: the smallest subnormal)."""
    with np.errstate(over="ignore"):
        return np.spacing(np.abs(np.asarray(ref, np.longdouble)).astype(dtype)).astype(np.longdouble)


def input_terms(x, axis, dtype, lse=None):
    """The part of a log-domain error owed to the input's precision, per slice along ``axis``
    (kept as a length-1 axis unless ``lse`` is given):

    - eps * sum_c p_c |x_c - m|: x_c - m is rounded in ``dtype`` (relative eps/2) and exp
      turns that into the same relative error of each term of the sum;
    - for a log-sum-exp (``lse``: its reference value), eps * (sum_c p_c |x_c| - |lse|)+:
      the rounding made in adding a negative max and the log-sum when the result lands
      near 0; zero where nothing cancels (x_c >= 0, or |lse| as large as the inputs)."""
    x = np.asarray(x, np.longdouble)
    if x.ndim == 0:  # one element: the term is 0 (x - m = 0); keep the result's shape
        return np.zeros((), np.longdouble)
    eps = np.finfo(dtype).eps
    p = oracle.softmax(x, axis)
    with np.errstate(invalid="ignore"):
        m = np.max(x, axis=axis, keepdims=True)
        z = np.where(p > 0, p * np.abs(x - m), 0)
        term = eps * np.nansum(z, axis=axis, keepdims=lse is None)
        if lse is not None:
            spread = np.nansum(np.where(p > 0, p * np.abs(x), 0), axis=axis)
            term = term + eps * np.maximum(spread - np.abs(np.asarray(lse, np.longdouble)), 0)
    return term


def assert_logs(actual, ref, dtype, what, x, axis=-1, reduced=False):
    """log-probabilities (``reduced`` False) or log-sum-exp (True) of input ``x``:
    |a - r| <= 4 ulp(r) of ``dtype`` + ``input_terms``.  A relative bar, so it holds for
    results far below 1 too (log1p of tiny sums).  After in_range."""
    dtype = np.dtype(dtype)
    ref = in_range(ref, dtype)
    _special_positions_match(actual, ref, what)
    ref = np.asarray(ref, np.longdouble)
    actual = np.asarray(actual, np.longdouble)
    if np.asarray(x).size == 0:
        return
    bar = ULPS * ulp(ref, dtype) + input_terms(x, axis, dtype, ref if reduced else None)
    fin = np.isfinite(ref)
    with np.errstate(invalid="ignore"):  # inf - inf where both are inf: not compared
        err = np.abs(actual - ref)
    if fin.any():
        worst = np.unravel_index(int(np.argmax(np.where(fin, err / bar, -1))), ref.shape)
        assert (err[fin] <= bar[fin]).all(), (
            f"{what}: error {float(err[worst]):.3g} = {float(err[worst] / ulp(ref, dtype)[worst]):.3g} "
            f"ulp > bar {float(bar[worst]):.3g} at {worst} (value {float(ref[worst]):.6g})")


def _loss_bar(logits, terms, options, dtype, ref):
    """4 ulp of the loss + the input's share: per sample |Q| times log-sum-exp's exp-rounding
    term, plus eps * (sum_c |q_c log p_c| - |loss|)+ where negative class weights make the
    terms cancel; for "sum"/"mean" the samples' terms add up and the float64 sum of n
    losses may round (log2(n) + 1) * eps64 * sum |loss_r|.  ``terms``: the oracle's
    ``cross_entropy_terms`` for these logits, target and options."""
    rows, q, big_q, den, _ = terms
    shape = np.shape(logits)
    k = shape[-1]
    x2 = np.reshape(logits, (math.prod(shape[:-1]), k)).astype(np.longdouble)
    eps = np.finfo(dtype).eps
    if x2.size:
        logp = oracle.log_softmax(x2)
        with np.errstate(invalid="ignore"):  # inf - inf on rows whose loss is inf: not compared
            absolute = np.nansum(np.where(q == 0, 0, np.abs(q * logp)), axis=1)
            own = (np.abs(big_q) * input_terms(x2, -1, dtype)[:, 0]
                   + eps * np.maximum(absolute - np.abs(rows), 0))
    else:
        own = np.zeros(len(rows), np.longdouble)
    reduction = options.get("reduction", "mean")
    if reduction == "none":
        extra = own.reshape(np.shape(ref))
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = 1 / den if reduction == "mean" else 1
            n = max(len(rows), 1)
            summed = (math.log2(n) + 1) * np.finfo(np.float64).eps * np.nansum(np.abs(rows))
            extra = abs(scale) * (np.nansum(own) + summed)
    return ULPS * ulp(ref, dtype) + extra


def assert_cross_entropy(loss, grad, logits, target, options, dtype, what):
    """Loss within 4 ulp (+ the input's share, ``_loss_bar``) of the oracle's, also far
    below 1; each gradient entry within GRAD_RTOL of the size of the two terms of
    s * (p * Q - q) it is made of; NaN/inf where the oracle's."""
    dtype = np.dtype(dtype)
    ref = in_range(oracle.cross_entropy(logits, target, **options), dtype)
    assert np.shape(loss) == np.shape(ref), f"{what}: loss shape {np.shape(loss)} != {np.shape(ref)}"
    loss = np.asarray(loss, np.longdouble)
    _special_positions_match(loss, ref, f"{what} (loss)")
    fin = np.isfinite(ref)
    terms_kw = {k: v for k, v in options.items() if k != "reduction"}
    terms = oracle.cross_entropy_terms(logits, target, **terms_kw)  # once: loss bar and grad
    bar = np.broadcast_to(_loss_bar(logits, terms, options, dtype, ref), np.shape(ref))
    err = np.abs(loss[fin] - ref[fin])
    assert (err <= bar[fin]).all(), (
        f"{what}: loss error {float(np.max(err)):.3g} > bar: {loss} vs {ref}")
    if grad is None:
        return
    assert grad.dtype == dtype and grad.shape == np.shape(logits), f"{what}: grad dtype/shape"
    _, q, big_q, den, _ = terms
    shape = np.shape(logits)
    p = oracle.softmax(np.reshape(logits, (math.prod(shape[:-1]), shape[-1])))
    s = 1 / den if options.get("reduction", "mean") == "mean" and den != 0 else 1
    with np.errstate(invalid="ignore"):
        p_err = np.where(p > 0, conditioning(p, dtype) * p, 0)  # p's own rounding term
        bound = (s * (GRAD_RTOL[dtype] * (p * big_q[:, None] + np.abs(q)) + p_err * big_q[:, None])
                 + np.finfo(dtype).tiny)
        bound = np.where(np.isfinite(bound), bound, np.finfo(dtype).tiny)  # NaN rows: exact 0 owed
    gref = in_range(oracle.cross_entropy_grad(logits, target, **options).reshape(p.shape), dtype)
    g = grad.reshape(p.shape).astype(np.longdouble)
    _special_positions_match(g, gref, f"{what} (grad)")
    fin = np.isfinite(gref)
    gerr = np.abs(g[fin] - gref[fin])
    assert (gerr <= bound[fin]).all(), f"{what}: grad error {float(gerr.max()):.3g}"
