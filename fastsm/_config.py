"""``fastsm.show_config()``: versions, threads and the exp path of every backend."""

from __future__ import annotations

import platform
import sys

from . import _parallel, _registry, _threads


def config() -> dict:
    import numpy as np

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "threads": _threads.get_num_threads(),
        "usable_cpus": _threads.usable_cpus(),
        "threading": _threading_line(),
        "backends": {},
    }
    for name in _registry.KNOWN:
        try:
            mod = _registry.load(name)
        except ImportError:
            info["backends"][name] = {"available": False, "why": _registry.failures().get(name)}
            continue
        entry = {"available": True}
        entry.update(mod.info())
        info["backends"][name] = entry
    return info


def _threading_line() -> str:
    if not _parallel.native_allowed():
        return ("serial: this process was forked after fastsm's threads ran, and an OpenMP "
                "team would hang here (spawn/forkserver workers keep their threads)")
    return ("adaptive: a backend's own threads (OpenMP, Numba) when they are measured to "
            "pay, else 1; extra threads only from cores no other fastsm call holds; "
            "serial in a child forked after they ran")


def show_config() -> None:
    """Print versions, thread settings and, per backend, availability and exp path."""
    info = config()
    for key in ("python", "platform", "numpy", "threads", "usable_cpus", "threading"):
        print(f"{key:>12}: {info[key]}")
    for name, entry in info["backends"].items():
        print(f"backend {name}:")
        for key, value in entry.items():
            print(f"{key:>16}: {value}")
