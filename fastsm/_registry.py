"""The backend registry: which kernel modules exist, whether they load here, and why not.

Every backend is one module in ``fastsm.kernels`` that defines the same kernel set on
validated, 2-D, C-contiguous ``(rows, classes)`` float32/float64 arrays (see
``fastsm/kernels/__init__.py`` for the contract).  Tests, benchmarks, the dispatcher and
``fastsm.backends()`` all read this list; adding a backend means adding one line here.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings

# (name, module): every backend, in the order the suite lists them: the three languages,
# then the hand-written C kernels the cython backend is measured against.
BACKEND_MODULES = (
    ("cython", "fastsm.kernels.cython_kernels"),
    ("c", "fastsm.kernels.c_kernels"),
    ("numba", "fastsm.kernels.numba_kernels"),
    ("numpy", "fastsm.kernels.numpy_kernels"),
)
KNOWN = tuple(name for name, _ in BACKEND_MODULES)
# The order the dispatcher falls back on where nothing has been measured.  c first: cython
# takes 0.84-1.10x its time in the main cells (benchmarks/results/cython_vs_c_bench*.txt),
# and c alone has the non-last-axis and float16/bfloat16 kernels, which the front takes
# from the backend it runs; numba last of the compiled ones: its first call compiles.
PREFERRED = ("c", "cython", "numba", "numpy")

# The kernels every backend module must define.
KERNELS = ("softmax", "log_softmax", "logsumexp", "ce_index", "ce_soft", "lse_parts",
           "from_lse_parts")
# Optional entries the front reads on every small call: a module lacking one gets None at
# load, so the front reads an attribute (getattr's miss raises and catches an
# AttributeError: 0.65 us of a 4x16 call)
OPTIONAL = ("count_ignored", "ce_index_plain")

_loaded: dict = {}
_failed: dict = {}
_lock = threading.Lock()
_warned = False


def _import(name: str, module: str):
    mod = importlib.import_module(module)
    missing = [k for k in KERNELS if not callable(getattr(mod, k, None))]
    if missing:
        raise ImportError(f"backend module {module} lacks kernels {missing}")
    for k in OPTIONAL:
        if not hasattr(mod, k):
            setattr(mod, k, None)
    return mod


def load(name: str):
    """The kernel module of backend ``name``; raises ValueError/ImportError if unusable."""
    mod = _loaded.get(name)
    if mod is not None:
        return mod
    if name not in KNOWN:
        raise ValueError(f"unknown backend {name!r}; expected one of {list(KNOWN)}")
    with _lock:
        if name in _loaded:
            return _loaded[name]
        if name in _failed:
            raise ImportError(f"backend {name!r} is not available: {_failed[name]}")
        try:
            mod = _import(name, dict(BACKEND_MODULES)[name])
        except Exception as exc:  # a broken optional backend must never break `import fastsm`
            _failed[name] = f"{type(exc).__name__}: {exc}"
            raise ImportError(f"backend {name!r} is not available: {_failed[name]}") from exc
        _loaded[name] = mod
        return mod


def available() -> list:
    """Names of the backends that load on this machine, in the registry's order."""
    global _warned
    names = []
    for name, _ in BACKEND_MODULES:
        try:
            load(name)
        except ImportError:
            continue
        names.append(name)
    if _failed and not _warned and not os.environ.get("FASTSM_QUIET"):
        _warned = True
        detail = "; ".join(f"{n}: {why}" for n, why in _failed.items())
        warnings.warn(
            f"fastsm: some backends are unavailable and will not be used ({detail}). "
            "Run fastsm.show_config() for details.",
            RuntimeWarning,
            stacklevel=3,
        )
    return names


def preferred_available() -> list:
    """The backends that load here, in PREFERRED order (the dispatcher's fallback)."""
    avail = available()
    return [name for name in PREFERRED if name in avail]


def failures() -> dict:
    """Backend name -> why it failed to load (only those tried)."""
    return dict(_failed)
