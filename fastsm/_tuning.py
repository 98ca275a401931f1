"""The winners table: which backend is fastest per (op, dtype, shape bucket).

A built-in default ships with fastsm (measured on the project's reference machine, see
``_BUILTIN``); ``fastsm.tune()`` (in ``fastsm.bench``, which measures) stores this
machine's own table here as JSON in the user's cache directory, which then overrides the
built-in one.  This module only stores and loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Empty on purpose: on the reference machine the C kernels (then named cython) won 42 of the
# 46 default cells and numba the other 4 by <= 10% (benchmarks/results/backends-full.md), too
# little to impose numba's 1-3 s first-call compile per kernel (once per machine: later
# processes read Numba's disk cache) on a default.  The fallback order (c first) applies.
_BUILTIN: dict = {}


def table_path() -> Path:
    override = os.environ.get("FASTSM_TUNING_FILE")
    if override:
        return Path(override)
    try:
        from platformdirs import user_cache_dir

        base = Path(user_cache_dir("fastsm", appauthor=False))
    except ImportError:  # platformdirs is a dependency; keep a sane fallback anyway
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastsm"
    return base / "tuning.json"


def _decode(entries) -> dict:
    table = {}
    for entry in entries:
        table[(entry["op"], entry["dtype"], entry["bucket"])] = entry["backend"]
    return table


def load_table() -> dict:
    table = dict(_BUILTIN)
    path = table_path()
    if path.is_file():
        try:
            table.update(_decode(json.loads(path.read_text())["winners"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a corrupt cache must not break calls; tune() rewrites it
    return table


def save_table(table: dict, machine: str) -> Path:
    """Write ``{(op, dtype, bucket): backend}`` as this machine's table; returns the path."""
    path = table_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [{"op": op, "dtype": dt, "bucket": b, "backend": name}
               for (op, dt, b), name in sorted(table.items())]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"machine": machine, "winners": entries}, indent=1))
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return path
