"""fastsm in a torch training loop on the CPU: ``cross_entropy`` and ``linear_cross_entropy``
as ``torch.autograd.Function``s (``pip install -e ".[torch]"``).

Design
- An adapter above the front: CPU tensors go in without a copy (``Tensor.numpy()`` shares
  their memory; the front copies only what it would copy for a NumPy array of the same
  layout) and results come back without one (``torch.from_numpy``).  The kernels are
  reached through fastsm's public functions only.
- One pass: when an input needs a gradient, the forward computes the fused gradient with
  the loss (the kernels give both for the price of one) and keeps it; the backward scales it
  by the incoming gradient.  For reduction "none" the incoming gradient is per sample:
  ``cross_entropy`` scales each sample's gradient row; ``linear_cross_entropy`` (whose
  ``d_weight`` sums over the samples) recomputes with those factors in its backward.
- torch's conventions: classes on dim 1 for N-d input ``(N, C, d1, ...)`` (and for
  probability targets), index targets ``(N, d1, ...)``, an unbatched ``(C,)`` input with a
  0-d target; float32 and float64 (float16 computed in float32, as the front does).
"""

from __future__ import annotations

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - the [torch] extra is absent
    raise ImportError("fastsm.torch needs torch: pip install -e '.[torch]'") from exc

import fastsm
from . import _linear

__all__ = ["cross_entropy", "linear_cross_entropy"]


def _array(t, what):
    """A CPU tensor's data as a NumPy array, sharing its memory."""
    if not isinstance(t, torch.Tensor):
        return np.asarray(t)
    if t.device.type != "cpu":
        raise ValueError(f"{what} is on {t.device}; fastsm.torch takes CPU tensors")
    if t.dtype == torch.bfloat16:
        raise TypeError(f"{what} has dtype torch.bfloat16; expected float32 or float64 "
                        "(or float16)")
    return t.detach().numpy()


def _class_last(a):
    """torch's (N, C, d1, ...) layout as fastsm's (N, d1, ..., C) view (no copy)."""
    return np.moveaxis(a, 1, -1) if a.ndim > 2 else a


def _class_first(a):
    return np.moveaxis(a, -1, 1) if a.ndim > 2 else a


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, options):
        x = _class_last(_array(logits, "input"))
        t = _array(target, "target")
        if t.dtype.kind == "f" and t.ndim > 2:
            t = _class_last(t)
        ctx.reduction = options["reduction"]
        if ctx.needs_input_grad[0]:
            loss, grad = fastsm.cross_entropy_with_grad(x, t, **options)
            ctx.grad = torch.from_numpy(np.ascontiguousarray(_class_first(grad)))
        else:
            loss = fastsm.cross_entropy(x, t, **options)
        return torch.from_numpy(np.asarray(loss))

    @staticmethod
    def backward(ctx, grad_output):
        g = ctx.grad
        if ctx.reduction == "none" and g.ndim > 1:
            g = g * grad_output.unsqueeze(1)   # per sample (classes on dim 1)
        else:
            g = g * grad_output
        return g, None, None


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, *, z_loss=0.0, softcap=None, backend=None):
    """``torch.nn.functional.cross_entropy`` by fastsm's fused kernels, differentiable with
    respect to ``input``; plus ``z_loss`` and ``softcap`` (see :func:`fastsm.cross_entropy`)."""
    options = dict(weight=None if weight is None else _array(weight, "weight"),
                   ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                   backend=backend)
    return _CrossEntropy.apply(input, target, options)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, bias, options):
        h, w = _array(hidden, "hidden"), _array(weight, "weight")
        t = _array(target, "target")
        b = None if bias is None else _array(bias, "bias")
        wants = ctx.needs_input_grad
        need = wants[0] or wants[1] or (bias is not None and wants[3])
        ctx.options, ctx.has_bias = options, bias is not None
        if need and options["reduction"] != "none":
            loss, dh, dw, db = _linear.linear_cross_entropy_with_grad(h, w, t, b, **options)
            ctx.grads = [torch.from_numpy(a) if a is not None else None for a in (dh, dw, db)]
        else:
            loss = _linear.linear_cross_entropy(h, w, t, b, **options)
            ctx.grads = None
            if need:  # "none": the backward needs the per-sample factors first
                ctx.save_for_backward(hidden, weight, target, bias)
        return torch.from_numpy(np.asarray(loss))

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.grads is not None:
            dh, dw, db = (None if a is None else a * grad_output for a in ctx.grads)
        else:
            hidden, weight, target, bias = ctx.saved_tensors
            factors = grad_output.detach().numpy().reshape(-1).astype(np.float64)
            _, dh, dw, db = _linear._run(
                _array(hidden, "hidden"), _array(weight, "weight"), _array(target, "target"),
                None if bias is None else _array(bias, "bias"),
                ctx.options["class_weight"], ctx.options["ignore_index"],
                ctx.options["label_smoothing"], "none", ctx.options["z_loss"],
                ctx.options["softcap"], ctx.options["chunk_size"], ctx.options["backend"],
                want_grad=True, row_scale=factors)
            dh, dw = torch.from_numpy(dh), torch.from_numpy(dw)
            db = None if db is None else torch.from_numpy(db)
        return dh, dw, None, db if ctx.has_bias else None, None


def linear_cross_entropy(hidden, weight, target, bias=None, *, ignore_index=-100,
                         label_smoothing=0.0, reduction="mean", z_loss=0.0, softcap=None,
                         class_weight=None, chunk_size=None, backend=None):
    """``F.cross_entropy(F.linear(hidden, weight, bias), target, ...)`` without the logits
    (:func:`fastsm.linear_cross_entropy`), differentiable with respect to ``hidden``,
    ``weight`` and ``bias``."""
    options = dict(ignore_index=ignore_index, label_smoothing=label_smoothing,
                   reduction=reduction, z_loss=z_loss, softcap=softcap,
                   class_weight=None if class_weight is None else _array(class_weight,
                                                                         "class_weight"),
                   chunk_size=chunk_size, backend=backend)
    return _LinearCrossEntropy.apply(hidden, weight, target, bias, options)
