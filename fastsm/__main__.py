"""``fastsm`` / ``python -m fastsm``: the command line (bench, tune, config)."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = ("Fast, accurate batched softmax, log-softmax, log-sum-exp and cross-entropy on "
               "the CPU: benchmark it on this machine, tune its dispatch, show its set-up.")
EPILOG = """examples:
  fastsm bench --quick                 every backend and installed peer, < 1 minute
  fastsm bench --contention            idle, beside a busy process, in a forked worker
  fastsm tune                          store this machine's fastest backend per shape
  fastsm config                        versions, threads, each backend's exp path

`fastsm COMMAND --help` describes each command's options."""


def parser() -> argparse.ArgumentParser:
    from . import bench

    top = argparse.ArgumentParser(prog="fastsm", description=DESCRIPTION, epilog=EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    b = commands.add_parser(
        "bench", help="time and check every backend next to NumPy, SciPy, torch, JAX",
        description=bench.__doc__.split("\n\n")[0])
    bench.add_arguments(b)
    b.set_defaults(run=lambda args: bench.run_cli(args, b))
    t = commands.add_parser(
        "tune", help="measure this machine and store the per-shape dispatch table",
        description="Measure every fastsm backend (the --quick grid, float32 and float64) and "
                    "store the per-(op, dtype, shape) winners that lead beyond the measured "
                    "noise; calls without backend= then use them.  Prints every decision.")
    t.add_argument("--full", action="store_true",
                   help="the full grid and repeats (several minutes) instead of --quick's")
    t.add_argument("--threads", type=int, default=None, help="threads while measuring")
    t.set_defaults(run=lambda args: _tune(args, t))
    c = commands.add_parser("config", help="print versions, threads and each backend's exp path",
                            description="Print versions, the thread setting, how threads are "
                                        "chosen, and per backend: available or why not, exp path.")
    c.set_defaults(run=_config)
    return top


def _tune(args, p) -> int:
    from . import _threads, bench

    bench.check_threads(args.threads, p)
    if args.threads is not None:
        _threads.set_num_threads(args.threads)
    bench.tune(quick=not args.full)
    return 0


def _config(args) -> int:
    from . import show_config

    show_config()
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = parser()
    args = top.parse_args(argv)
    if args.command is None:  # bare `fastsm`: say what it can do
        top.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
