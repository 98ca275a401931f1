# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""The cython backend's kernels built for x86-64-v4 (see cython_rows.pxi, setup.py)."""

BUILD = "x86-64-v4"

include "cython_rows.pxi"
