"""How fast charnn's commands start, as whole processes: the table of `charnn bench`'s startup section.

    python scripts/startup.py [--rounds 10] [--before DIR] [--json FILE]

Times `charnn --help`, `charnn runs` (10 runs present), `charnn sample RUN -n 200` (the default 2x256
model) and `charnn info RUN` against `python -c "import numpy"` and `python -c "import torch"`, each
once per round, taking turns; the figures are medians. `--before DIR` also times the same commands
with the charnn checkout in DIR first on PYTHONPATH, in the same turns: the code before a change, e.g.

    git worktree add /tmp/before 744ee50 && python scripts/startup.py --before /tmp/before

Run it with `nice -n -5` (as root) on a shared machine, and compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from charnn.bench.startup import ROUNDS, bench_startup
from charnn.cli.bench import startup_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"runs of each command (default {ROUNDS})")
    parser.add_argument("--before", type=Path, help="a charnn checkout (the directory holding charnn/) to compare")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    args = parser.parse_args()
    if args.before is not None and not (args.before / "charnn" / "__init__.py").is_file():
        parser.error(f"--before {args.before}: no charnn/__init__.py there")
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="charnn-startup-") as tmp, console.status("startup") as status:
        rows = bench_startup(Path(tmp), args.rounds, args.before, log=status.update)
    print(f"{platform.processor() or platform.machine()}, {platform.system()}, Python {platform.python_version()}, "
          f"{sys.executable}")
    Console(width=120).print(startup_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
