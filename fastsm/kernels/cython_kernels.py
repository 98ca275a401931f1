"""cython backend: the kernels written in Cython (cython_rows.pxi), in the widest build this
CPU runs.

setup.py compiles cython_rows.pxi as ``_cython_v4`` (-march=x86-64-v4, AVX-512),
``_cython_v3`` (-march=x86-64-v3, AVX2 + FMA) and ``_cython_base`` (the compiler's
baseline); the baseline build says which level the CPU has (``isa_level``), and this
module takes the kernels of the widest build that exists and the CPU runs.  This is what
the c backend gets from gcc's target_clones, done per module with compiler flags.
"""

import importlib

from . import _cython_base


def _widest():
    level = _cython_base.isa_level()
    for needed, name in ((4, "_cython_v4"), (3, "_cython_v3")):
        if level >= needed:
            try:
                return importlib.import_module(f"{__name__.rpartition('.')[0]}.{name}")
            except ImportError:  # not built here (compiler without that -march)
                continue
    return _cython_base


_build = _widest()

NAME = "cython"
MIN_PARALLEL = _build.MIN_PARALLEL
softmax = _build.softmax
log_softmax = _build.log_softmax
logsumexp = _build.logsumexp
lse_parts = _build.lse_parts
from_lse_parts = _build.from_lse_parts
ce_index = _build.ce_index
ce_soft = _build.ce_soft
info = _build.info
