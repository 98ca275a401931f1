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
  0-d target; float32 and float64; float16 and bfloat16 (the latter through ml_dtypes)
  computed in float32 with results in their dtype, as the front does.
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
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16 of its own: ml_dtypes' shares the bits
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError(f"{what} has dtype torch.bfloat16, which needs ml_dtypes "
                            "(pip install -e '.[half]')") from None
        return t.detach().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.detach().numpy()


def _from(a):
    """A NumPy result as a tensor sharing its memory (ml_dtypes' bfloat16 as torch's)."""
    a = np.asarray(a)
    if a.dtype.name == "bfloat16" and a.dtype.itemsize == 2:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _tensor(a):
    """Targets as tensors (the backward keeps them with ``save_for_backward``), sharing a
    NumPy array's memory."""
    return a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))


def _class_last(a):
    """torch's (N, C, d1, ...) layout as fastsm's (N, d1, ..., C) view (no copy)."""
    return np.moveaxis(a, 1, -1) if a.ndim > 2 else a


def _class_first(a):
    return np.moveaxis(a, -1, 1) if a.ndim > 2 else a


def _kept(ctx, grad_output):
    """(the gradients the forward kept, or None; whether they go to torch as they are).
    As they are at the first backward with an incoming gradient of exactly 1
    (``loss.backward()``): handed over uncopied (d_weight is V x D) and let go of by the
    context, so torch keeps them as the leaves' ``.grad`` without a clone; a later backward
    through the same graph (``retain_graph=True``) recomputes them."""
    grads = ctx.grads
    if grads is not None and grad_output.numel() == 1 and float(grad_output) == 1.0:
        ctx.grads = None
        return grads, True
    return grads, False


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, options):
        ctx.options = options
        ctx.grads = None
        if not ctx.needs_input_grad[0]:
            return _from(_CrossEntropy.compute(logits, target, options, False))
        ctx.save_for_backward(logits, target)
        loss, grad = _CrossEntropy.compute(logits, target, options, True)
        ctx.grads = [grad]
        return _from(loss)

    @staticmethod
    def compute(logits, target, options, want_grad):
        x = _class_last(_array(logits, "input"))
        t = _array(target, "target")
        if t.dtype.kind == "f" and t.ndim > 2:
            t = _class_last(t)
        if not want_grad:
            return fastsm.cross_entropy(x, t, **options)
        loss, grad = fastsm.cross_entropy_with_grad(x, t, **options)
        return loss, _from(np.ascontiguousarray(_class_first(grad)))

    @staticmethod
    def backward(ctx, grad_output):
        grads, as_they_are = _kept(ctx, grad_output)
        if as_they_are:
            return grads[0], None, None
        if grads is None:
            logits, target = ctx.saved_tensors
            grads = _CrossEntropy.compute(logits, target, ctx.options, True)[1:]
        g = grads[0]
        if ctx.options["reduction"] == "none" and g.ndim > 1:
            return g * grad_output.unsqueeze(1), None, None  # per sample, classes on dim 1
        return g * grad_output, None, None


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, *, z_loss=0.0, softcap=None, backend=None):
    """``torch.nn.functional.cross_entropy`` by fastsm's fused kernels, differentiable with
    respect to ``input``; plus ``z_loss`` and ``softcap`` (see :func:`fastsm.cross_entropy`)."""
    options = dict(weight=None if weight is None else _array(weight, "weight"),
                   ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                   backend=backend)
    return _CrossEntropy.apply(input, _tensor(target), options)


class _TorchProducts:
    """The linear cross-entropy's matrix products by torch's matmul on the NumPy views
    (``torch.from_numpy`` shares them): a training loop's products run on the BLAS and
    threads torch runs its own on, and ``d_weight`` accumulates by ``addmm_`` (beta = 1)
    where NumPy needs a slab buffer and an extra add."""

    @staticmethod
    def matmul(a, b, out):
        torch.mm(torch.from_numpy(a), torch.from_numpy(b), out=torch.from_numpy(out))

    @staticmethod
    def accumulate(acc, a, b):
        torch.from_numpy(acc).addmm_(torch.from_numpy(a), torch.from_numpy(b))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, bias, options):
        wants = ctx.needs_input_grad
        need = wants[0] or wants[1] or (bias is not None and wants[3])
        ctx.options, ctx.has_bias, ctx.grads = options, bias is not None, None
        if need:
            ctx.save_for_backward(hidden, weight, target, bias)
        if need and options["reduction"] != "none":
            loss, *grads = _LinearCrossEntropy.compute(hidden, weight, target, bias, options,
                                                       True)
            ctx.grads = grads
        else:  # "none": the backward needs the per-sample factors first
            loss = _LinearCrossEntropy.compute(hidden, weight, target, bias, options, False)[0]
        return _from(loss)

    @staticmethod
    def compute(hidden, weight, target, bias, options, want_grad, row_scale=None):
        """(loss, d_hidden, d_weight, d_bias) as tensors; the products on torch's BLAS."""
        loss, *grads = _linear._run(
            _array(hidden, "hidden"), _array(weight, "weight"), _array(target, "target"),
            None if bias is None else _array(bias, "bias"), want_grad=want_grad,
            row_scale=row_scale, products=_TorchProducts, **options)
        return [loss] + [None if a is None else _from(a) for a in grads]

    @staticmethod
    def backward(ctx, grad_output):
        grads, as_they_are = _kept(ctx, grad_output)
        if not as_they_are:
            hidden, weight, target, bias = ctx.saved_tensors
            if ctx.options["reduction"] == "none":
                factors = grad_output.detach().to(torch.float64).numpy().reshape(-1)
                grads = _LinearCrossEntropy.compute(hidden, weight, target, bias, ctx.options,
                                                    True, row_scale=factors)[1:]
            else:
                if grads is None:
                    grads = _LinearCrossEntropy.compute(hidden, weight, target, bias,
                                                        ctx.options, True)[1:]
                grads = [None if a is None else a * grad_output for a in grads]
        dh, dw, db = grads
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
    return _LinearCrossEntropy.apply(hidden, weight, _tensor(target), bias, options)
