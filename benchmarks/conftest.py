try:
    import pytest
except ImportError:  # asv's discovery imports every module here; the bench extra has no pytest
    pytest = None

import fastsm


def pytest_configure(config):
    """Benchmarks run once, untimed, in a plain `pytest` (CI proves they work);
    `--benchmark-only` or `--benchmark-enable` times them."""
    opt = config.option
    if hasattr(opt, "benchmark_disable") and not (opt.benchmark_only or opt.benchmark_enable):
        opt.benchmark_disable = True
    if getattr(opt, "benchmark_columns", "unset") is None:  # the user chose none: a table
        opt.benchmark_columns = ["median", "iqr", "min", "rounds"]  # of ~120, not 246, columns
    if getattr(opt, "benchmark_name", None) == "normal":
        opt.benchmark_name = "short"


if pytest is not None:
    pytest_configure = pytest.hookimpl(tryfirst=True)(pytest_configure)


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record threading details next to the timings."""
    from fastsm._config import config as fastsm_config

    info = fastsm_config()
    machine_info["fastsm_threads"] = info["threads"]
    machine_info["fastsm_usable_cpus"] = info["usable_cpus"]
    machine_info["fastsm_backends"] = {
        name: {k: str(v) for k, v in entry.items()} for name, entry in info["backends"].items()
    }
    machine_info["fastsm_version"] = fastsm.__version__
