"""``python -m fastsm`` / ``fastsm``: the command line.

    fastsm bench [--quick] [--ops ...] [--shapes ...] [--json P] [--markdown P] [--plot P] [--save]
    fastsm tune          measure this machine and store the dispatch table (= bench --quick --save)
    fastsm config        print versions, threads and each backend's exp path
"""

import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv else "bench"
    if command == "bench":
        from .bench import main as bench_main

        return bench_main(argv)
    if command == "tune":
        from .bench import main as bench_main

        return bench_main(["--quick", "--save", "--peers", ""] + argv)
    if command == "config":
        from . import show_config

        show_config()
        return 0
    print(__doc__, file=sys.stderr)
    return 0 if command in ("-h", "--help", "help") else 2


if __name__ == "__main__":
    sys.exit(main())
