#!/usr/bin/env python3
"""The charnn benchmark, the same as `charnn bench`: speed against this machine's own ceilings.

    python scripts/bench.py                  # everything, a few minutes on 2 CPU cores
    python scripts/bench.py --quick          # a reduced set in under two minutes
    python scripts/bench.py --json bench.json
    python scripts/bench.py --device cuda    # the same rows on a GPU
"""

import sys

from charnn.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
