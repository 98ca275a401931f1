"""Which backend runs a call when the caller names none.

Order of precedence:
1. ``FASTSM_BACKEND=name`` in the environment forces one backend for the whole process.
2. Otherwise the winners table picks per (op, dtype, shape bucket) — see
   ``fastsm._tuning`` for how the table is built, stored and measured.
3. A bucket with no entry, or whose winner is unavailable here, falls back to the first
   available backend in the registry's PREFERRED order (fastest first: c, cython, numba,
   numpy).
"""

from __future__ import annotations

import os

from . import _registry

_forced = None
_table = None          # {(op, dtype_name, bucket): backend name}
_fallback = None
_modules: dict = {}    # (op, dtype num, n, k) -> kernel module: the choice, cached per shape


def _env_backend():
    name = os.environ.get("FASTSM_BACKEND", "").strip()
    if not name:
        return None
    _registry.load(name)  # unknown or unavailable: fail loudly, once, at first use
    return name


def bucket(n: int, k: int) -> str:
    """Shape bucket of an (n rows, k classes) problem: class count x total size."""
    kc = "k<=32" if k <= 32 else ("k<=4096" if k <= 4096 else "k>4096")
    size = n * k
    sc = "tiny" if size <= 1 << 14 else ("mid" if size <= 1 << 20 else "big")
    return f"{kc}|{sc}"


def reset() -> None:
    """Forget cached choices (after tune(), or when FASTSM_BACKEND changed)."""
    global _forced, _table, _fallback
    _forced = _table = _fallback = None
    _modules.clear()


def _load_state():
    global _forced, _table, _fallback
    from . import _tuning

    _forced = _env_backend() or ""
    avail = _registry.preferred_available()
    if not avail:
        raise ImportError("fastsm: no backend could be loaded (not even numpy)")
    _fallback = avail[0]
    _table = {key: name for key, name in _tuning.load_table().items() if name in avail}


def choose(op: str, dtype_name: str, n: int, k: int) -> str:
    if _table is None:
        _load_state()
    if _forced:
        return _forced
    return _table.get((op, dtype_name, bucket(n, k)), _fallback)


def default_backend() -> str:
    """The backend used when no table entry applies (or the forced one)."""
    if _table is None:
        _load_state()
    return _forced or _fallback


def kernels_for(op: str, dtype, n: int, k: int):
    """The kernel module that runs ``op`` on (n, k) ``dtype`` data when no backend is named."""
    key = (op, dtype.num, n, k)
    mod = _modules.get(key)
    if mod is None:
        if len(_modules) > 4096:  # shapes seen by a long-running process
            _modules.clear()
        mod = _modules[key] = _registry.load(choose(op, dtype.name, n, k))
    return mod
