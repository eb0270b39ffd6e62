"""Run every benchmark of bgwatch, one after the other, each in its own process (``make bench``).

Run: ``.venv/bin/python benchmarks/run.py [--quick] [--markdown FILE]``

* ``overhead.py``: the SDK with and without bgwatch (and a naive wrapper, and peers), per
  call, for several body sizes, sync, async and threaded, plus memory per in-flight response;
* ``stream.py`` (when present): a large event stream with and without bgwatch;
* ``sse_parser.py`` (when present): throughput of the incremental SSE parser.

Each script prints its own tables; this runner prints what machine they ran on first (copy
that with the numbers, see ``benchmarks/README.md``) and exits non-zero only when a script
failed to run, never because a target was missed (overhead.py says so in its output).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts(quick: bool, markdown: Path | None) -> list[tuple[str, list[str]]]:
    """The scripts to run, with their arguments; optional ones only when they exist."""
    overhead = ["--quick"] if quick else []
    if markdown is not None:
        overhead += ["--markdown", str(markdown)]
    plan = [("overhead.py", overhead)]
    if (HERE / "stream.py").exists():
        plan.append(("stream.py", ["--mb", "20", "--sdk-mb", "2"] if quick else []))
    if (HERE / "sse_parser.py").exists():
        plan.append(("sse_parser.py", ["--mb", "4"] if quick else []))
    return plan


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; the exit status says whether they all ran."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test; the numbers are rough)")
    parser.add_argument("--markdown", type=Path, help="write overhead.py's table to this file too")
    args = parser.parse_args(argv)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"python {sys.version.split()[0]} at {sys.executable}")
    if load is not None:
        print(f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other work skews the numbers)")
    failed = []
    for name, extra in scripts(args.quick, args.markdown):
        print(f"\n######## {name} {' '.join(extra)}".rstrip(), flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(HERE / name), *extra], check=False)
        print(f"######## {name}: exit {result.returncode} after {time.monotonic() - started:.0f} s", flush=True)
        if result.returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
