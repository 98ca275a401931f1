import numpy as np
import pytest

import fastsm

BACKENDS = fastsm.backends()
RTOL = {np.dtype(np.float32): 3e-6, np.dtype(np.float64): 5e-15, np.dtype(np.float16): 1e-3}


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def pytest_report_header(config):
    return f"fastsm backends: {BACKENDS}; threads: {fastsm.get_num_threads()}"
