"""Fused linear cross-entropy: the loss of ``hidden @ weight.T + bias`` and its gradients,
never holding the (tokens, vocabulary) logits.

Design
- Tokens go in chunks of ``chunk_size`` rows.  Per chunk: the logits ``h_c @ W.T (+ b)`` by
  a BLAS matmul (``products``: NumPy's, or torch's from fastsm.torch) into one reused
  (chunk, V) buffer; the front's cross-entropy kernel
  call (``_api._ce_kernel``: any backend, soft-capping block by block) writes the chunk's
  logit gradient G over it (the kernel reads a block-sized copy of each block of logits:
  a row's logits are read again after its gradient row is written), already scaled for
  the reduction; then
  ``d_hidden[c] = G @ W``, ``d_weight += G.T @ h_c`` and ``d_bias += sum G``.  The
  reduction's denominators (class-weight sum, kept count for the z-loss) are taken over all
  tokens first, so every chunk's gradient carries the final scale.
- Peak memory beyond the inputs and the returned gradients: the chunk buffer, one
  ``_CAP_BLOCK`` block (1-2 MiB) and one (8 MiB) slab for the ``d_weight`` accumulation
  (NumPy's matmul has no ``beta=1``: a ``G.T @ h_c`` product of full size would be a
  second (V, D) array).  Default chunk: 1/8 of the logits' bytes, within [8, 128] MiB, so
  at most 1/16 of the unfused logits + gradient.  Chunk size matters to BLAS: per 512
  tokens at V = 32000, D = 1024 (OpenBLAS, 2 threads, medians of 3) the three products
  took 685 ms in chunks of 256 and 601 ms in one of 512 (the ``d_weight`` product, of
  inner size chunk, ran at 150 GFLOP/s with 256 and 187 with 512); a second (chunk, V)
  buffer for the gradient would have halved the chunk for the same memory.
- Costs beyond the three matmuls an unfused computation also does: one read-add-write of
  ``d_weight`` per chunk after the first (measured per chunk at V = 128000, D = 512: 27 ms
  against 160 ms for each matmul) and the kernel's pass over the chunk buffer.
"""

from __future__ import annotations

import numpy as np

from . import _api

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_SLAB_BYTES = 8 << 20


def _default_chunk(n, v, itemsize):
    budget = min(128 << 20, max(8 << 20, n * v * itemsize // 8))
    return max(1, min(n, budget // max(1, v * itemsize)))


def _prepare(hidden, weight, target, bias, class_weight, ignore_index, label_smoothing,
             reduction, z_loss, softcap, chunk_size):
    h = np.asarray(hidden)
    w = np.asarray(weight)
    if h.dtype != w.dtype or not (h.dtype in (_F32, _F64) or _api._is_half(h.dtype)):
        raise TypeError(f"hidden and weight must both be float32 or both float64 (or both "
                        f"float16 / bfloat16); got {h.dtype} and {w.dtype}")
    compute = _F32 if _api._is_half(h.dtype) else h.dtype
    if w.ndim != 2:
        raise ValueError(f"weight (the classifier) has shape {w.shape}; expected (V, D)")
    if h.ndim < 1 or h.shape[-1] != w.shape[1]:
        raise ValueError(f"hidden has shape {h.shape}; expected (..., {w.shape[1]}) to match "
                         f"weight of shape {w.shape}")
    v, d = w.shape
    batch = h.shape[:-1]
    n = int(np.prod(batch))
    t = np.asarray(target)
    if t.shape != batch or t.dtype.kind not in "iu":
        raise ValueError(f"target has shape {t.shape} and dtype {t.dtype}; expected integer "
                         f"class indices of shape {batch}")
    b = None
    if bias is not None:
        b = np.asarray(bias)
        if b.shape != (v,) or not (b.dtype.kind in "biuf" or _api._is_half(b.dtype)):
            raise ValueError(f"bias has shape {b.shape} and dtype {b.dtype}; expected a real "
                             f"array of shape ({v},)")
        b = np.ascontiguousarray(b, dtype=compute)
    eps, ignore_index = _api._check_ce_options(reduction, label_smoothing, ignore_index)
    z, cap = _api._check_lm_options(z_loss, softcap)
    if chunk_size is None:
        chunk = _default_chunk(n, v, h.dtype.itemsize)
    else:
        chunk = _api._integer("chunk_size", chunk_size)
        if chunk < 1:
            raise ValueError(f"chunk_size={chunk_size!r}; expected a number of tokens >= 1")
    cw = _api._class_weights(class_weight, v)
    t2, ignored, den, kept = _api._index_targets(t, v, ignore_index, class_weight is not None, cw)
    # 16-bit inputs: the classifier in float32 once (V x D), the tokens chunk by chunk
    return (np.ascontiguousarray(h.reshape(n, d)), np.ascontiguousarray(w, dtype=compute), b,
            t2, ignored, den, kept, cw, eps, ignore_index, z, cap, chunk, batch)


class NumpyProducts:
    """The matrix products by NumPy's matmul (its BLAS and BLAS threads)."""

    def __init__(self):
        self._slab = None

    def matmul(self, a, b, out):
        np.matmul(a, b, out=out)

    def accumulate(self, acc, a, b):
        """acc += a @ b.  NumPy's matmul has no beta=1: the product goes by 8 MiB slabs of
        acc's rows into one reused buffer, added after each."""
        v, d = acc.shape
        rows = max(1, _SLAB_BYTES // max(1, d * acc.itemsize))
        if self._slab is None or self._slab.shape[1:] != (d,) or self._slab.dtype != acc.dtype:
            self._slab = np.empty((min(v, rows), d), acc.dtype)
        for v0 in range(0, v, rows):
            v1 = min(v, v0 + rows)
            part = self._slab[: v1 - v0]
            np.matmul(a[v0:v1], b, out=part)
            acc[v0:v1] += part


def _run(hidden, weight, target, bias, class_weight, ignore_index, label_smoothing,
         reduction, z_loss, softcap, chunk_size, backend, want_grad, row_scale=None,
         products=None):
    """(loss, d_hidden, d_weight, d_bias); the gradients None without want_grad.
    ``row_scale`` (n,): per-sample factors on the gradient (torch's backward of "none").
    ``products``: who multiplies the matrices (``NumpyProducts`` by default; fastsm.torch
    passes torch's, so a torch training loop runs on torch's BLAS)."""
    (h, w, b, t2, ignored, den, kept, cw, eps, ignore_index, z, cap, chunk,
     batch) = _prepare(hidden, weight, target, bias, class_weight, ignore_index,
                       label_smoothing, reduction, z_loss, softcap, chunk_size)
    n, d = h.shape
    v = w.shape[0]
    dt = w.dtype                  # the compute dtype: float32 for 16-bit inputs
    result = h.dtype
    scale, z_coef = _api._gradient_scales(reduction, den, kept, z)
    loss_rows = np.zeros(n)
    lse = np.empty(n) if z else None
    d_h = np.empty((n, d), result) if want_grad else None
    d_h_chunk = np.empty((min(n, chunk), d), dt) if want_grad and result != dt else None
    d_w = np.zeros((v, d), dt) if want_grad else None
    d_b = np.zeros(v) if want_grad and b is not None else None
    buf = np.empty((min(n, chunk), v), dt)
    products = NumpyProducts() if products is None else products
    op = "cross_entropy_with_grad" if want_grad else "cross_entropy"
    for first, r0 in enumerate(range(0, n, chunk)):
        rows = slice(r0, min(n, r0 + chunk))
        hc = h[rows] if result == dt else h[rows].astype(dt)
        logits = buf[: hc.shape[0]]
        products.matmul(hc, w.T, logits)
        if b is not None:
            logits += b
        if not v:
            continue
        mod = _api._kernels(backend, op, dt, hc.shape[0], v)
        g = logits if want_grad else None  # in place: _ce_kernel copies block by block
        _api._ce_kernel(mod, op, "index", logits, t2[rows], cw, ignore_index, eps, scale,
                        loss_rows[rows], g, z_coef, lse[rows] if lse is not None else None,
                        None, cap)
        if not want_grad:
            continue
        if row_scale is not None:
            g *= row_scale[rows, None].astype(dt)
        if d_h_chunk is None:
            products.matmul(g, w, d_h[rows])
        else:
            products.matmul(g, w, d_h_chunk[: hc.shape[0]])
            with np.errstate(over="ignore"):
                d_h[rows] = d_h_chunk[: hc.shape[0]]
        if first == 0:
            products.matmul(g.T, hc, d_w)
        else:
            products.accumulate(d_w, g.T, hc)
        if d_b is not None:
            d_b += g.sum(axis=0, dtype=np.float64)
    loss = _api._reduce_loss(loss_rows, lse, z, ignored, reduction, den, kept, batch, result)
    if not want_grad:
        return loss, None, None, None
    with np.errstate(over="ignore"):
        return (loss, d_h.reshape(batch + (d,)), d_w.astype(result, copy=False),
                d_b.astype(result) if d_b is not None else None)


def linear_cross_entropy(hidden, weight, target, bias=None, *, ignore_index=-100,
                         label_smoothing=0.0, reduction="mean", z_loss=0.0, softcap=None,
                         class_weight=None, chunk_size=None, backend=None):
    r"""Cross-entropy of the logits ``hidden @ weight.T + bias`` against class indices,
    without ever holding those logits whole.

    ``hidden`` (..., D) and ``weight`` (V, D), both float32 or both float64 (or both
    float16 / bfloat16: computed in float32, results in their dtype); ``bias`` (V,) or
    None; ``target`` integer class indices of shape (...).  ``class_weight`` is the
    per-class weight (``weight`` of :func:`cross_entropy`; here ``weight`` is the
    classifier).  Every other option as in :func:`cross_entropy` (``softcap`` and
    ``z_loss`` included); probability targets are not taken here.

    The tokens go in chunks of ``chunk_size`` (default: a buffer of 1/8 of the logits'
    bytes, between 8 and 128 MiB): extra memory O(chunk_size x V), not O(tokens x V).
    Products by NumPy's matmul (its BLAS and BLAS threads), the loss by fastsm's kernels.
    """
    return _run(hidden, weight, target, bias, class_weight, ignore_index, label_smoothing,
                reduction, z_loss, softcap, chunk_size, backend, want_grad=False)[0]


def linear_cross_entropy_with_grad(hidden, weight, target, bias=None, *, ignore_index=-100,
                                   label_smoothing=0.0, reduction="mean", z_loss=0.0,
                                   softcap=None, class_weight=None, chunk_size=None,
                                   backend=None):
    r"""``(loss, d_hidden, d_weight, d_bias)`` of :func:`linear_cross_entropy` in one pass
    over the token chunks: with ``G`` the logit gradient of a chunk (as
    :func:`cross_entropy_with_grad` gives it), ``d_hidden = G @ weight``,
    ``d_weight = sum_chunks G.T @ hidden`` and ``d_bias = sum G`` (None without a bias).
    For reduction "none" the gradients are those of the sum of the per-sample losses.
    """
    return _run(hidden, weight, target, bias, class_weight, ignore_index, label_smoothing,
                reduction, z_loss, softcap, chunk_size, backend, want_grad=True)
