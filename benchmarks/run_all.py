"""Run the benchmark scripts of this folder (``make bench``; ``make bench BENCH=cmtf`` runs one).

Each ``bench_<name>.py`` writes its JSON result under ``benchmarks/results/`` with the
machine description, the date and the command; the book reads those files.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    scripts = {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(scripts), help="run this benchmark alone")
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    args = parser.parse_args(argv)
    chosen = [args.only] if args.only else list(scripts)
    failed = []
    for i, name in enumerate(chosen, 1):
        command = [sys.executable, str(scripts[name])] + (["--quick"] if args.quick else [])
        print(f"[{i}/{len(chosen)}] {' '.join(command)}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(command)
        print(f"[{i}/{len(chosen)}] {name}: exit {code} after {time.perf_counter() - start:.0f} s",
              flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
