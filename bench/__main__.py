"""`make bench`: run every benchmark of bench/ in turn, each in its own process, and print its figures.

Each benchmark is a module runnable as ``python -m bench.<name>``; they measure, they do not
assert: targets are printed beside the figures so a reader sees at once where we stand.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ORDER = ("producer", "correlator", "worklist", "ledger")


def main() -> int:
    here = Path(__file__).parent
    failures = 0
    for name in ORDER:
        if not (here / f"{name}.py").exists():
            print(f"== bench.{name}: not written yet", flush=True)
            continue
        print(f"== bench.{name}", flush=True)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", f"bench.{name}"], check=False)
        print(f"== bench.{name}: exit {done.returncode} in {time.monotonic() - started:.0f} s", flush=True)
        failures += done.returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
