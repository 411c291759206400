"""Wall time of a fresh install: `make install` (uv, tools/uv_install.py) against pip (what make install ran
before: pip upgraded, then the README's two pip lines), alternating, each in a fresh clone with a fresh venv and a
cold uv cache.

    python benchmarks/install_bench.py [--rounds 2]

Takes about 4 minutes a round on 2 cores and needs ~8 GB of free disk per clone (one at a time). Prints a table
and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PINNED = ["torch==2.14.1", "torchvision==0.29.1"]
PYTHON = os.environ.get("PYTHON", "python3")  # the interpreter both venvs are made from, as make install's


def by_pip(clone: Path, env: dict[str, str]) -> None:
    subprocess.run([PYTHON, "-m", "venv", ".venv"], cwd=clone, check=True, env=env)
    pip = [str(clone / ".venv/bin/python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], cwd=clone, check=True, env=env)  # as make install did
    subprocess.run([*pip, *PINNED], cwd=clone, check=True, env=env)
    subprocess.run([*pip, "-e", ".[dev]"], cwd=clone, check=True, env=env)


def by_make(clone: Path, env: dict[str, str]) -> None:
    subprocess.run(
        ["make", "install", f"PYTHON={PYTHON}"],
        cwd=clone,
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def timed(install, work: Path) -> float:
    clone = work / "clone"
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    cache = work / "uv-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "UV_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    install(clone, env)
    seconds = time.perf_counter() - start
    shutil.rmtree(clone)
    shutil.rmtree(cache, ignore_errors=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"pip": [], "make install (uv)": []}
    with tempfile.TemporaryDirectory(dir=REPO.parent) as work:
        for round_ in range(args.rounds):
            for name, install in zip(times, (by_pip, by_make), strict=True):
                times[name].append(timed(install, Path(work)))
                print(f"round {round_ + 1}, {name}: {times[name][-1]:.1f} s", file=sys.stderr)
    baseline = statistics.median(times["pip"])
    print("| install | runs (s) | median (s) | vs pip |")
    print("|---|---|---|---|")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(
            f"| {name} | {' / '.join(f'{t:.0f}' for t in runs)} | {median:.0f} | {median / baseline:.2f}x |"
        )


if __name__ == "__main__":
    main()
