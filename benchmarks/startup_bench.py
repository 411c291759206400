"""Start-up of the entry points: the seconds a command spends importing before it does anything, now against what
every entry point imported until 2026-12-04 (`jasper.training.run`, hence Lightning and all of torchmetrics).

Each row runs a fresh interpreter in the repository, alternating the two sides, and times it to exit:
- `import <entry>`: the entry point's module as it is now (export.py and evaluate.py never import Lightning; train.py
  imports it once its command line has passed);
- `import <entry>, jasper.training.run`: the same plus what it used to import first;
- `train.py <refused override>`: a command train.py refuses (a `stage_settings` override), end to end;
- `train.py <refused config>`: a config refused once composed (`stages.stage2.steps=0`, by
  `jasper.training.preflight.validate`), end to end: before, train.py imported Lightning before validating.

    OMP_NUM_THREADS=1 python benchmarks/startup_bench.py [--rounds 5]

Needs nothing but the installed project; about a minute a round on 2 cores. Run it on idle cores: a concurrent torch
job slows imports severalfold. Prints a table of medians and the ratio before / now.

Measured 2026-12-04, 3 rounds, idle cores (seconds, now / before): export 4.60 / 8.14, evaluate 4.02 / 8.21, train
(import) 3.37 / 7.08, a refused train.py command 3.68 / 7.02: 1.8-2.1x faster starts, ~3.5-4 s saved per process.
`make test` with it: 617 passed, 10 skipped in 8:05 on three workers (8:49-8:50 the session before, on a machine
whose speed varies by ~15% between sessions, so the suite's share of the gain is not isolated).
Again 2026-12-04 with the refused-config row (train.py validating before Lightning loads), 3 rounds, idle cores:
export 4.04 / 6.97, evaluate 4.15 / 6.92, train 3.18 / 7.23, refused override 3.38 / 7.13, refused config
3.72 / 7.42 (2.0x).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRIES = ("export", "evaluate", "train")
# A refused override (by check_overrides, before Hydra composes) and a refused config (by validate, composed).
REFUSED = {
    "refused override": ["train.py", "stage_settings.steps=5"],
    "refused config": ["train.py", "stage=2", "stages.stage2.steps=0", "run_name=startup_bench"],
}


def seconds(args: list[str], expect: int = 0) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != expect:
        raise SystemExit(f"{args} exited {result.returncode}, not {expect}:\n{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for entry in ENTRIES:
            times.setdefault(f"{entry}: now", []).append(seconds(["-c", f"import {entry}"]))
            times.setdefault(f"{entry}: before", []).append(
                seconds(["-c", f"import {entry}, jasper.training.run"])
            )
        for name, command in REFUSED.items():
            times.setdefault(f"{name}: now", []).append(seconds(command, expect=1))
            times.setdefault(f"{name}: before", []).append(
                seconds(
                    [
                        "-c",
                        "import jasper.training.run, runpy, sys; sys.argv = " + repr(command) + "; "
                        "runpy.run_path('train.py', run_name='__main__')",
                    ],
                    expect=1,
                )
            )
    print(f"| start-up ({rounds} rounds, median) | now (s) | before (s) | before / now |")
    print("|---|---:|---:|---:|")
    for name in [*ENTRIES, *REFUSED]:
        now, before = (statistics.median(times[f"{name}: {side}"]) for side in ("now", "before"))
        print(f"| {name} | {now:.2f} | {before:.2f} | {before / now:.2f} |")


if __name__ == "__main__":
    main()
