"""fastsm on Dask arrays: lazy softmax, log_softmax, logsumexp and cross-entropy on Dask's own
schedulers (threads, processes, ``dask.distributed``), for data larger than memory.

An adapter above the front: every block goes through fastsm's public functions (so the
kernels see what the front validates) and nothing here keeps state, so the functions and
their arguments pickle to worker processes.

Design
- Class axis in one chunk: one ``map_blocks`` call per block, exactly the in-memory result.
- Class axis in several chunks: a ``da.reduction`` of per-chunk row statistics
  ``(m, L)`` = (row max, log of the row's sum of exp(x - m)) in float64, combined by
  rescaling (``M = max m_k``, ``L = log sum_k exp(m_k - M + L_k)``, itself a fastsm
  logsumexp), then one blockwise pass: log_softmax = (x - M) - L, softmax = exp of that.
  Carrying (M, L) instead of lse = M + L keeps L when |M| is huge (rows of -1e30), as the
  in-memory kernels do.  Both passes are kernels of every backend, reached through the
  front (``_api.lse_parts``: (m, L) in one read of the chunk, L log1p-accurate, so results
  near zero keep their digits through the combination; ``_api.from_lse_parts``: the
  normalisation in one pass).
- Cross-entropy: per block of rows, the per-sample losses and the mean's weight sum, then
  ``sum``/``mean`` over blocks as the in-memory version divides (sum of losses / sum of
  target weights).  Class axis in one chunk: each block is one in-memory fastsm call.  In
  several chunks, class-index targets: one read of each (rows, class chunk) block, where it
  lies, gives small per-row parts (``_index_ce_parts``: m, L, the target's logit if the
  target is in the chunk, and for label smoothing sum_c w_c (x_c - m)), combined per block
  of rows into the loss (``_index_ce_loss``) with d_c = lse - x_c = (M - x_c) + L (never the
  difference of two large numbers: a confident row's tiny loss keeps its digits).  Soft
  targets: the row statistics, then per block the partial loss sum_c q_c d_c.  The
  gradient block is exp(-d) Q - q.  The chunk's classes come from ``block_info``;
  ignore_index, class weights, label smoothing and soft targets follow the in-memory rules
  (a zero q_c contributes 0 even at x_c = -inf; rows without a usable logit stay NaN;
  ignored rows are 0).
- Measured (``python -m benchmarks.dask_bench``, 2 workers x 1 thread, float32, the class
  axis in 4 chunks; results in benchmarks/results/dask_bench.txt).  Speed, 2 GiB that fits
  in 64 MiB chunks: logsumexp and cross_entropy (mean) 3.0-5.5x the same formulas written
  with dask.array ufuncs, 1.27-1.37x in-memory fastsm's time (2 threads; the cluster's own
  latency is ~40 ms per logsumexp and ~90-105 ms per cross_entropy compute on this 2-core
  machine).  Rejected, measured: statistics as max, a shifted copy and a logsumexp (three
  reads of each chunk) 1.75-2.2x the formulas on 512 MiB; the index-target loss as a second
  pass after the statistics, 1.6x in-memory: its tasks pulled 64 MiB blocks between
  workers (30 transfers, 128 ms per compute).
- Memory: a chunk's kernels allocate per-row outputs only, and the cross-entropy's
  float64 temporaries run in row slabs (``_SLAB``).  8 GiB float32 logits in 256 MiB chunks
  on 2 workers x 1 GiB: none killed, nothing spilled (peak worker RSS in the results file).
- Threads: nothing to set.  dask.distributed's nanny starts each worker process with
  OMP_NUM_THREADS=1 (its ``distributed.nanny.pre-spawn-environ``), which fastsm reads as
  its thread count, so a worker runs ``threads_per_worker`` one-thread kernels at a time,
  and a cluster of n_workers x threads_per_worker = cores never oversubscribes.  On the
  threaded scheduler (one process) fastsm's core budget does it: a call gets extra
  threads only from cores no other fastsm call holds, so the pool's threads, each in a
  kernel, run one thread each.
"""

from __future__ import annotations

import functools

import numpy as np

try:
    import dask.array as da
except ImportError as exc:  # pragma: no cover - the [dask] extra is absent
    raise ImportError("fastsm.dask needs Dask: pip install -e '.[dask]' "
                      "(dask[array] and distributed)") from exc

import fastsm
from . import _api

__all__ = ["softmax", "log_softmax", "logsumexp", "cross_entropy", "cross_entropy_with_grad"]

_STATS = np.dtype([("m", np.float64), ("L", np.float64)])


def _as_dask(x, what="x"):
    x = x if isinstance(x, da.Array) else da.asarray(x)
    return x, _api._dtypes(np.dtype(x.dtype), what)[1]


def _axis(axis, ndim):
    if isinstance(axis, tuple) or axis is None:
        raise TypeError(f"axis={axis!r}: fastsm.dask takes one integer axis")
    return _api.normalize_axis_index(_api._integer("axis", axis), ndim)


# ----------------------------------------------------------------------------- row statistics
def _chunk_stats(x, axis, keepdims, backend=None):
    """(m, L) per slice of one chunk, float64, the reduced axis kept, in one pass of the
    kernels' ``lse_parts``: L is the logsumexp of x - m, so a tiny L (a confident row)
    keeps its digits whatever the size of m."""
    m, L = _api.lse_parts(x, axis[0], backend=backend)
    stats = np.empty(m.shape, _STATS)
    stats["m"], stats["L"] = m, L
    return stats


def _combine_stats(stats, axis, keepdims, backend=None):
    """Merge per-chunk (m, L) along the reduced axis: M = max m, L = log sum exp(m - M + L)."""
    if isinstance(stats, list):
        stats = np.concatenate(stats, axis=axis[0])
    m, L = stats["m"], stats["L"]
    out = np.empty(m.shape[:axis[0]] + (1,) + m.shape[axis[0] + 1:], _STATS)
    with np.errstate(invalid="ignore"):
        big = np.max(m, axis=axis[0], keepdims=True)
        finite = np.isfinite(big)
        shifted = np.where(np.isfinite(m), m - np.where(finite, big, 0) + L,
                           np.where(np.isnan(m) | np.isnan(L), np.nan, m))
        out["m"] = big
        out["L"] = fastsm.logsumexp(shifted, axis=axis[0], keepdims=True, backend=backend)
    return out


def _row_stats(x, axis, backend):
    chunk = functools.partial(_chunk_stats, backend=backend)
    merge = functools.partial(_combine_stats, backend=backend)
    return da.reduction(x, chunk, merge, combine=merge, axis=axis, keepdims=True, dtype=_STATS,
                        concatenate=False, meta=np.empty((0,) * x.ndim, _STATS))


def _lse_from_stats(stats, result):
    m, L = stats["m"], stats["L"]
    with np.errstate(invalid="ignore"):
        # a finite max: m + L; +-inf or NaN max: the combined L already holds the answer
        value = np.where(np.isfinite(m), m + L, L)
    return value.astype(result)


def _normalise(x, stats, axis, log, backend):
    """(x - M) - L, or its exp, with the combined row statistics of x's slices (the
    kernels' ``from_lse_parts``: one pass, in the compute dtype)."""
    return _api.from_lse_parts(x, stats["m"], stats["L"], axis, log=log, backend=backend)


# ----------------------------------------------------------------------------- public
def logsumexp(x, axis=-1, keepdims=False, *, backend=None):
    """``fastsm.logsumexp`` of a Dask array along one axis, lazily (any chunking)."""
    x, result = _as_dask(x)
    ax = _axis(axis, x.ndim)
    if x.numblocks[ax] == 1:
        return x.map_blocks(fastsm.logsumexp, axis=ax, keepdims=keepdims, backend=backend,
                            drop_axis=[] if keepdims else ax,
                            chunks=tuple((1,) if i == ax else c for i, c in enumerate(x.chunks))
                            if keepdims else None, dtype=result)
    stats = _row_stats(x, ax, backend)
    lse = stats.map_blocks(_lse_from_stats, result, dtype=result)
    return lse if keepdims else lse.squeeze(axis=ax)


def _elementwise(name, x, axis, backend):
    x, result = _as_dask(x)
    ax = _axis(axis, x.ndim)
    if x.numblocks[ax] == 1:
        return x.map_blocks(getattr(fastsm, name), axis=ax, backend=backend, dtype=result)
    stats = _row_stats(x, ax, backend)
    return da.map_blocks(_normalise, x, stats, ax, name == "log_softmax", backend,
                         dtype=result)


def softmax(x, axis=-1, *, backend=None):
    """``fastsm.softmax`` of a Dask array along one axis, lazily (any chunking)."""
    return _elementwise("softmax", x, axis, backend)


def log_softmax(x, axis=-1, *, backend=None):
    """``fastsm.log_softmax`` of a Dask array along one axis, lazily (any chunking)."""
    return _elementwise("log_softmax", x, axis, backend)


def _ce_block(logits, target, weight, ignore_index, label_smoothing, backend, want_grad):
    """(per-sample losses, gradient of their sum or None) for one block of rows."""
    options = dict(weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                   reduction="none", backend=backend)
    if want_grad:
        return fastsm.cross_entropy_with_grad(logits, target, **options)
    return fastsm.cross_entropy(logits, target, **options), None


def _first(pair):
    return pair[0]


def _second(pair):
    return pair[1]


def _sample_weights(target, weight, ignore_index, k):
    """The weight each sample adds to the mean's denominator (0 where ignored)."""
    t = np.asarray(target)
    kept = (t != ignore_index) & (t >= 0) & (t < k)
    w = np.ones(k) if weight is None else np.asarray(weight, np.float64)
    return np.where(kept, w[np.where(kept, t, 0)], 0.0)


def _index_targets(t, w, ignore_index, eps, k, check):
    """(class index or 0, kept, target-term weight (1 - eps) w_y or 0) per row of a slab's
    (rows, 1) targets; with ``check``, a target neither a class nor ignore_index raises
    (callers check once per block of rows: by its first class chunk)."""
    y = np.asarray(t)[:, 0].astype(np.int64)
    keep = y != ignore_index
    bad = ~(((y >= 0) & (y < k)) | ~keep)
    if bad.any() and check:
        pos = int(np.flatnonzero(bad)[0])
        raise ValueError(f"target value {y[pos]} at block row {pos} is out of range: "
                         f"expected a class index in [0, {k}) or ignore_index={ignore_index}")
    yc = np.clip(np.where(keep, y, 0), 0, k - 1)
    return yc, keep, np.where(keep, (1.0 - eps) * w[yc], 0.0)


def _chunk_q(t, w, ignore_index, eps, k, soft, c0, c1):
    """q_c over classes c0..c1 of a 2-D slab (float64, the slab's shape) and, for index
    targets, the kept rows (None for soft targets)."""
    wc = w[c0:c1]
    if soft:
        return wc * ((1.0 - eps) * np.asarray(t, np.float64) + eps / k), None
    yc, keep, keep_w = _index_targets(t, w, ignore_index, eps, k, c0 == 0)
    inside = keep & (yc >= c0) & (yc < c1)
    q = np.where(keep[..., None], eps / k * wc, 0.0)
    at = np.where(inside, yc - c0, -1)
    rows = np.nonzero(inside)
    q[rows + (at[rows],)] += keep_w[rows]
    return q, keep


_SLAB = 1 << 21  # elements per step of _ce_chunk: its float64 temporaries stay ~16 MiB


def _ce_chunk(x, t, stats, w, ignore_index, eps, k, soft, what, block_info=None):
    """One (rows, class chunk) block: ``what`` = "loss" (partial per-sample loss, shape
    (..., 1)), "q" (partial sum of q, soft targets) or "grad" (the gradient of the summed
    loss, needing Q: passed as stats["Q"]).  Rows go in slabs of _SLAB elements, so the
    float64 temporaries never reach the chunk's size."""
    c0, c1 = block_info[0]["array-location"][-1]
    x = np.asarray(x)
    x2 = x.reshape(-1, x.shape[-1])
    t2 = np.asarray(t).reshape(x2.shape[0], -1)
    st = stats.reshape(-1, 1)
    wide = what == "grad"
    out = np.empty((x2.shape[0], x2.shape[1] if wide else 1), x.dtype if wide else np.float64)
    step = max(1, _SLAB // max(1, x2.shape[1]))
    for r0 in range(0, x2.shape[0], step):
        r = slice(r0, r0 + step)
        out[r] = _ce_rows(x2[r], t2[r], st[r], w, ignore_index, eps, k, soft, what, c0, c1)
    return out.reshape(x.shape[:-1] + out.shape[-1:])


def _ce_rows(x, t, stats, w, ignore_index, eps, k, soft, what, c0, c1):
    """_ce_chunk for a 2-D slab of rows."""
    q, kept = _chunk_q(t, w, ignore_index, eps, k, soft, c0, c1)
    if what == "q":
        return q.sum(axis=-1, keepdims=True)
    m, L = stats["m"], stats["L"]
    with np.errstate(invalid="ignore", over="ignore"):
        d = (m - np.asarray(x, np.float64)) + L  # lse - x_c without forming lse
        dead = ~np.isfinite(m) | np.isnan(L)     # no usable logit in the row: NaN
        keep = kept[..., None] if kept is not None else True
        if what == "loss":
            part = np.where(q != 0.0, q * d, 0.0).sum(axis=-1, keepdims=True)
            return np.where(dead & keep, np.nan, part)
        grad = np.exp(-d) * stats["Q"] - q
        grad = np.where(dead, np.nan, grad)
        return np.where(keep, grad, 0.0).astype(x.dtype)


_CE_PARTS = np.dtype([("m", np.float64), ("L", np.float64), ("xy", np.float64),
                      ("hit", np.bool_), ("S", np.float64), ("shift", np.float64),
                      ("W", np.float64)])


def _index_ce_parts(x, t, w, ignore_index, eps, k, backend, block_info=None):
    """Everything one (rows, class chunk) block adds to its rows' losses, for class-index
    targets, in one read of the block where it lies: the lse parts (m, L), the target's
    logit where the target is in the chunk (xy, hit) and, with label smoothing,
    S = sum_c w_c (x_c - shift) over the chunk's classes of nonzero weight (shift = m, or 0
    where m is not finite) with their weight sum W.  Shape (..., 1)."""
    c0, c1 = block_info[0]["array-location"][-1]
    x = np.asarray(x)
    x2 = x.reshape(-1, x.shape[-1])
    out = np.zeros(x2.shape[0], _CE_PARTS)
    m, L = _api.lse_parts(x2, -1, backend=backend)
    out["m"], out["L"] = m[:, 0], L[:, 0]
    yc, keep, _ = _index_targets(np.asarray(t).reshape(-1, 1), w, ignore_index, eps, k, c0 == 0)
    rows = np.flatnonzero(keep & (yc >= c0) & (yc < c1))
    out["xy"][rows] = x2[rows, yc[rows] - c0]
    out["hit"][rows] = True
    if eps:
        wc = w[c0:c1]
        used = wc != 0.0  # a zero weight adds 0 even where x = -inf
        wu = wc[used]
        with np.errstate(invalid="ignore"):
            shift = np.where(np.isfinite(m[:, 0]), m[:, 0], 0.0)
        out["shift"], out["W"] = shift, wu.sum()
        step = max(1, _SLAB // max(1, x2.shape[1]))
        for r0 in range(0, x2.shape[0], step):
            xs = x2[r0:r0 + step]
            xs = xs if used.all() else xs[:, used]
            with np.errstate(invalid="ignore"):
                out["S"][r0:r0 + step] = (xs.astype(np.float64) - shift[r0:r0 + step, None]) @ wu
    return out.reshape(x.shape[:-1] + (1,))


def _stats_of_parts(parts):
    """The combined (M, L) of a block of rows from its chunks' _index_ce_parts, shape (...)."""
    return _combine_stats(parts[["m", "L"]].astype(_STATS), (parts.ndim - 1,), True)[..., 0]


def _index_ce_loss(parts, t, w, ignore_index, eps, k):
    """Per-sample losses (float64) of a block of rows from its chunks' _index_ce_parts
    (..., chunks): M = max m, L combined as in _combine_stats, then
    loss = (1 - eps) w_y ((M - x_y) + L) + eps / k sum_c w_c ((M - x_c) + L), the last sum
    as W L - sum_chunks (S + W (shift - M)).  Rows with no usable logit: NaN; ignored: 0."""
    st = _stats_of_parts(parts)
    big, L = st["m"], st["L"]
    _, keep, keep_w = _index_targets(np.asarray(t).reshape(-1, 1), w, ignore_index, eps, k,
                                     False)
    keep, keep_w = keep.reshape(big.shape), keep_w.reshape(big.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        xy = np.where(parts["hit"], parts["xy"], 0.0).sum(axis=-1)
        loss = np.where(keep_w != 0.0, keep_w * ((big - xy) + L), 0.0)
        if eps:
            shifted = parts["S"] + parts["W"] * (parts["shift"] - big[..., None])
            total_w = parts["W"].sum(axis=-1)
            loss += np.where(keep, eps / k * (total_w * L - shifted.sum(axis=-1)), 0.0)
        dead = ~np.isfinite(big) | np.isnan(L)  # no usable logit in the row: NaN
        loss[dead & keep] = np.nan
    return loss


def _with_q(stats, q_total):
    out = np.empty(stats.shape, _STATS_Q)
    out["m"], out["L"], out["Q"] = stats["m"], stats["L"], q_total
    return out


_STATS_Q = np.dtype([("m", np.float64), ("L", np.float64), ("Q", np.float64)])


def _index_q_total(t, w, ignore_index, eps, k):
    """Q = sum_c q_c per row of a block of (..., 1) class-index targets."""
    t = np.asarray(t)
    _, keep, keep_w = _index_targets(t.reshape(-1, 1), w, ignore_index, eps, k, True)
    return np.where(keep, keep_w + eps / k * w.sum(), 0.0).reshape(t.shape)


def _chunked_class_ce(x, t, soft, w, ignore_index, eps, result, want_grad, backend):
    """(per-sample loss float64 (...), gradient of their sum or None) with the class axis
    of x in several chunks (see the design block)."""
    k = x.shape[-1]
    tt = t if soft else t[..., None]                        # index targets broadcast
    common = dict(w=w, ignore_index=ignore_index, eps=eps, k=k, soft=soft)
    part_chunks = x.chunks[:-1] + ((1,) * x.numblocks[-1],)
    if soft:
        stats = _row_stats(x, x.ndim - 1, backend)          # (..., 1)
        parts = da.map_blocks(_ce_chunk, x, tt, stats, what="loss", chunks=part_chunks,
                              dtype=np.float64, meta=np.empty((0,) * x.ndim, np.float64),
                              **common)
        loss = parts.sum(axis=-1)
    else:
        # one read of each block, where it lies, then small per-row parts combined per
        # block of rows: a second pass over the blocks (the loss after the row statistics)
        # moved 64 MiB blocks between workers and cost 1.6x the in-memory time
        parts = da.map_blocks(_index_ce_parts, x, tt, w, ignore_index, eps, k, backend,
                              chunks=part_chunks, dtype=_CE_PARTS,
                              meta=np.empty((0,) * x.ndim, _CE_PARTS))
        ind = tuple(range(x.ndim))
        loss = da.blockwise(_index_ce_loss, ind[:-1], parts, ind, t, ind[:-1], w, None,
                            ignore_index, None, eps, None, k, None, concatenate=True,
                            dtype=np.float64, meta=np.empty((0,) * (x.ndim - 1), np.float64))
    if not want_grad:
        return loss, None
    if soft:
        q_total = da.map_blocks(_ce_chunk, x, tt, stats, what="q", chunks=part_chunks,
                                dtype=np.float64, **common).sum(axis=-1, keepdims=True)
    else:
        q_total = tt.map_blocks(_index_q_total, w, ignore_index, eps, k, dtype=np.float64)
    if not soft:  # the row statistics from the parts already read, not a second pass
        stats = da.blockwise(_stats_of_parts, ind[:-1], parts, ind, concatenate=True,
                             dtype=_STATS, meta=np.empty((0,) * (x.ndim - 1), _STATS))[..., None]
    full = da.map_blocks(_with_q, stats, q_total, dtype=_STATS_Q,
                         meta=np.empty((0,) * x.ndim, _STATS_Q))
    grad = da.map_blocks(_ce_chunk, x, tt, full, what="grad", dtype=result,
                         meta=np.empty((0,) * x.ndim, result), **common)
    return loss, grad


def _cross_entropy(logits, target, weight, ignore_index, label_smoothing, reduction, backend,
                   want_grad):
    x, result = _as_dask(logits, "logits")
    if x.ndim < 2:
        raise ValueError("fastsm.dask cross-entropy takes logits of shape (..., classes) with "
                         f"at least one batch axis; got shape {x.shape}")
    eps, ignore_index = _api._check_ce_options(reduction, label_smoothing, ignore_index)
    k = x.shape[-1]
    t = target if isinstance(target, da.Array) else da.asarray(target)
    soft = t.shape == x.shape
    if not soft and t.shape != x.shape[:-1]:
        raise ValueError(f"target has shape {t.shape}; expected {x.shape[:-1]} (class indices) "
                         f"or {x.shape} (probabilities) for logits of shape {x.shape}")
    if not soft and np.dtype(t.dtype).kind not in "iu":
        raise TypeError(f"class-index target must have an integer dtype, got {t.dtype}")
    t = t.rechunk(x.chunks if soft else x.chunks[:-1])
    if x.numblocks[-1] == 1:
        ind = tuple(range(x.ndim))
        pairs = da.blockwise(_ce_block, ind[:-1], x, ind, t, ind if soft else ind[:-1],
                             weight, None, ignore_index, None, eps, None,
                             backend, None, want_grad, None, concatenate=True, dtype=object,
                             meta=np.empty((0,) * (x.ndim - 1), object))
        loss = pairs.map_blocks(_first, dtype=result,
                                meta=np.empty((0,) * (x.ndim - 1), result))
        loss64 = loss.astype(np.float64)
        grad = None
        if want_grad:
            grad = pairs.map_blocks(_second, new_axis=[x.ndim - 1], chunks=x.chunks,
                                    dtype=result, meta=np.empty((0,) * x.ndim, result))
    else:
        w = _api._class_weights(weight, k)
        loss64, grad = _chunked_class_ce(x, t, soft, w, ignore_index, eps, result, want_grad,
                                         backend)
        loss = loss64.astype(result)
    if reduction == "none":
        value = loss
        scale = None
    else:
        total = loss64.sum()
        if reduction == "sum":
            value, scale = total.astype(result), None
        else:
            if soft:
                den = float(np.prod(x.shape[:-1]))
            else:
                den = t.map_blocks(_sample_weights, weight, ignore_index, k,
                                   dtype=np.float64).sum()
            value = (total / den).astype(result)
            scale = den
    if not want_grad:
        return value
    if scale is not None:
        grad = (grad / scale).astype(result)
    return value, grad


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                  reduction="mean", backend=None):
    """``fastsm.cross_entropy`` of Dask logits (..., K) and target, lazily; same options,
    same results, any chunking (the class axis too)."""
    return _cross_entropy(logits, target, weight, ignore_index, label_smoothing, reduction,
                          backend, want_grad=False)


def cross_entropy_with_grad(logits, target, *, weight=None, ignore_index=-100,
                            label_smoothing=0.0, reduction="mean", backend=None):
    """``(loss, grad)`` as ``fastsm.cross_entropy_with_grad``, lazily, as Dask arrays."""
    return _cross_entropy(logits, target, weight, ignore_index, label_smoothing, reduction,
                          backend, want_grad=True)
