"""Wall time of a fresh install and of the first use after it, in a fresh clone with a fresh venv and a cold uv
cache, alternating:
- pip: what make install ran first (pip upgraded, then the README's two pip lines; pip byte-compiles everything);
- make install: uv (tools/uv_install.py), byte-compiling everything (--compile-bytecode).
The first use is the start of make test: two workers collecting the tests (`pytest --collect-only -n 2`), which
imports what the tests import (torch, lightning, transformers, the project), with PYTHONDONTWRITEBYTECODE=1 as on
these machines.

    python benchmarks/install_bench.py [--rounds 2]

Takes about 6 minutes a round on 2 cores and needs ~8 GB of free disk per clone (one at a time). Prints a table
and the ratio of the medians.

Measured once and not kept (commit ffaf2d3): uv without --compile-bytecode, byte code written on first import
instead (the project imports ~7,000 of the ~22,500 modules installed). Install 46 / 39 s against 71 / 73 s, but the
first use 38 / 39 s against 17 / 22 s (both workers compile what they import): 81 s against 92 s in all, before
the modules that later processes import (mteb, sentence-transformers) are compiled in their turn (not measured).
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


def first_use(clone: Path, env: dict[str, str]) -> None:
    subprocess.run(
        [str(clone / ".venv/bin/python"), "-m", "pytest", "--collect-only", "-q", "-n", "2"],
        cwd=clone,
        check=True,
        env={**env, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
    )


WAYS = {"pip": by_pip, "make install (uv)": by_make}


def timed(install, work: Path) -> tuple[float, float]:
    clone = work / "clone"
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    cache = work / "uv-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "UV_CACHE_DIR": str(cache), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    install(clone, env)
    installed = time.perf_counter()
    first_use(clone, env)
    used = time.perf_counter()
    shutil.rmtree(clone)
    shutil.rmtree(cache, ignore_errors=True)
    return installed - start, used - installed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in WAYS}
    with tempfile.TemporaryDirectory(dir=REPO.parent) as work:
        for round_ in range(args.rounds):
            for name, install in WAYS.items():
                times[name].append(timed(install, Path(work)))
                print(f"round {round_ + 1}, {name}: install, first use {times[name][-1]} s", file=sys.stderr)
    baseline = statistics.median(sum(run) for run in times["pip"])
    print("| install | install (s) | first use (s) | both, median (s) | vs pip |")
    print("|---|---|---|---|---|")
    for name, runs in times.items():
        median = statistics.median(sum(run) for run in runs)
        installs = " / ".join(f"{run[0]:.0f}" for run in runs)
        uses = " / ".join(f"{run[1]:.0f}" for run in runs)
        print(f"| {name} | {installs} | {uses} | {median:.0f} | {median / baseline:.2f}x |")


if __name__ == "__main__":
    main()
