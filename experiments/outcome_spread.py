"""How much the tests' training outcomes vary with the seed and the CPU kernel: the margins of every test marked
``outcome`` come from here.

    python experiments/outcome_spread.py                      # seeds 0-2 x kernels default, avx2, avx512
    python experiments/outcome_spread.py --seeds 0 1 --kernels default avx2

Each (seed, kernel) runs ``pytest -m outcome`` once, in a subprocess with ``JASPER_OUTCOME_SEED`` and
``ATEN_CPU_CAPABILITY`` set (torch picks its vectorised kernels from the latter at import; ``avx512`` on a machine
without it falls back to the best it has, which the table then shows as a repeat). The tests record every
quantity they assert on through tests/conftest.py's ``outcome`` fixture. The table gives, per quantity, the
smallest and largest value over all runs, the mean, the standard deviation, and the test's margin; a margin is
sound when it sits below the smallest value with the mean several standard deviations above it. Writes
experiments/outcome_spread.{md,json}; a run that fails a margin is still recorded (that is what it is for).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KERNELS = ("default", "avx2", "avx512")


def run(seed: int, kernel: str, log: Path) -> tuple[int, float]:
    """One ``pytest -m outcome`` pass; returns its exit status and wall seconds."""
    env = {
        **os.environ,
        "JASPER_OUTCOME_SEED": str(seed),
        "ATEN_CPU_CAPABILITY": kernel,
        "JASPER_OUTCOME_LOG": str(log),
    }
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "outcome", "-q", "-p", "no:cacheprovider"], cwd=REPO, env=env
    )
    return result.returncode, time.perf_counter() - start


def table(rows: list[dict], seeds: list[int], kernels: list[str]) -> str:
    quantities: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        quantities.setdefault((row["test"], row["name"]), []).append(row)
    runs = [f"s{seed} {kernel}" for kernel in kernels for seed in seeds]
    lines = [
        "| test | quantity | " + " | ".join(runs) + " | mean | sd | min | margin | margin < min |",
        "|---|---|" + "---|" * (len(runs) + 5),
    ]
    for (test, name), found in quantities.items():
        by_run = {f"s{r['seed']} {r['kernel']}": r["value"] for r in found}
        values = list(by_run.values())
        margin = found[0]["margin"]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        cells = " | ".join(f"{by_run[r]:+.4f}" if r in by_run else "-" for r in runs)
        lines.append(
            f"| {test} | {name} | {cells} | {statistics.mean(values):+.4f} | {sd:.4f} | {min(values):+.4f} | "
            f"{margin:+.4f} | {'yes' if margin < min(values) else '**no**'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--out", default=str(REPO / "experiments" / "outcome_spread"))
    args = parser.parse_args()
    rows, walls = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for kernel in args.kernels:
            for seed in args.seeds:
                log = Path(tmp) / f"{kernel}-{seed}.jsonl"
                status, walls[f"s{seed} {kernel}"] = run(seed, kernel, log)
                found = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
                print(f"seed {seed}, kernel {kernel}: pytest exit {status}, {len(found)} values", flush=True)
                rows += found
    command = "python experiments/outcome_spread.py " + " ".join(
        ["--seeds", *map(str, args.seeds), "--kernels", *args.kernels]
    )
    text = (
        "# Training outcomes of the tests over seeds and CPU kernels\n\n"
        f"`{command}` (this file is its output; every value in the .json beside it). Each run is one "
        "`pytest -m outcome` with `JASPER_OUTCOME_SEED` and `ATEN_CPU_CAPABILITY` set; a test's margin is sound "
        "when it is below the smallest value of every run.\n\n"
        + table(rows, args.seeds, args.kernels)
        + "\n\nWall time per run (s): "
        + ", ".join(f"{run} {wall:.0f}" for run, wall in walls.items())
        + "\n"
    )
    Path(args.out).with_suffix(".md").write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
