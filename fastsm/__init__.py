"""fastsm: fast, accurate batched softmax, log-softmax, log-sum-exp and cross-entropy on the CPU.

>>> import numpy as np, fastsm
>>> fastsm.softmax(np.array([2.0, 1.0, 0.1]))
array([0.65900114, 0.24243297, 0.09856589])

Backends: ``numpy`` (portable baseline), ``numba`` (parallel JIT), ``cython`` (kernels written
in Cython, OpenMP) and ``c`` (hand-written C row kernels, OpenMP).
``fastsm.backends()`` lists those that load here; calls pick the fastest per shape.
"""

from ._api import (
    Backend,
    CrossEntropyOutput,
    backends,
    cross_entropy,
    cross_entropy_with_grad,
    get_backend,
    log_softmax,
    logsumexp,
    softmax,
)
from ._config import show_config
from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad
from ._threads import get_num_threads, set_num_threads

__version__ = "0.1.0"


def __getattr__(name):
    # tune() lives with the benchmark it runs; importing that stays off `import fastsm`
    if name == "tune":
        from .bench import tune

        return tune
    raise AttributeError(f"module 'fastsm' has no attribute {name!r}")

__all__ = [
    "Backend",
    "CrossEntropyOutput",
    "backends",
    "cross_entropy",
    "cross_entropy_with_grad",
    "get_backend",
    "get_num_threads",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "log_softmax",
    "logsumexp",
    "set_num_threads",
    "show_config",
    "softmax",
    "tune",
]
