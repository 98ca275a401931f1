"""``fastsm.show_config()``: versions, threads and the exp path of every backend."""

from __future__ import annotations

import platform
import sys

from . import _registry, _threads


def config() -> dict:
    import numpy as np

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "threads": _threads.get_num_threads(),
        "usable_cpus": _threads.usable_cpus(),
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


def show_config() -> None:
    """Print versions, thread settings and, per backend, availability and exp path."""
    info = config()
    for key in ("python", "platform", "numpy", "threads", "usable_cpus"):
        print(f"{key:>12}: {info[key]}")
    for name, entry in info["backends"].items():
        print(f"backend {name}:")
        for key, value in entry.items():
            print(f"{key:>16}: {value}")
