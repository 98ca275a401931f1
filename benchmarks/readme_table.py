"""Put the softmax rows and the dispatch lines of benchmarks/results/quick.md into README.md.

    python -m fastsm bench --quick --markdown benchmarks/results/quick.md --plot benchmarks/results/quick.png
    python benchmarks/readme_table.py

The README's table is this file's output, never typed by hand: it replaces the text between
the ``<!-- bench-excerpt -->`` markers.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- bench-excerpt:start -->", "<!-- bench-excerpt:end -->"


def excerpt(markdown: str, op: str = "softmax") -> str:
    lines = markdown.splitlines()
    header = [ln for ln in lines if ln.startswith("| op |") or ln.startswith("|---")][:2]
    rows = [ln for ln in lines if ln.startswith(f"| {op} |")]
    dispatch = [ln for ln in lines if ln.startswith(f"- {op} ")]
    return "\n".join([lines[0], "", *header, *rows, "", "Without `backend=`, fastsm runs:", "",
                      *dispatch])


def main(results=ROOT / "benchmarks/results/quick.md", readme=ROOT / "README.md"):
    text = Path(readme).read_text()
    if START not in text or END not in text:
        sys.exit(f"{readme} lacks the {START} / {END} markers")
    block = excerpt(Path(results).read_text())
    new = re.sub(re.escape(START) + ".*?" + re.escape(END),
                 lambda _: f"{START}\n{block}\n{END}", text, flags=re.S)
    Path(readme).write_text(new)
    print(f"{readme}: table from {results}")


if __name__ == "__main__":
    main()
