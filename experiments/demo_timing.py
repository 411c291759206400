"""Two recipes of `make demo` timed side by side, in the same conditions: cold caches, one after the other.

    python experiments/demo_timing.py                  # the embedded default vs the previous one
    python experiments/demo_timing.py --only current   # one of them

Each recipe runs `make demo`'s three commands (train.py -m stage=1,2,3, report.py, evaluate.py eval=demo) as
subprocesses with its own run_name and an empty cache folder (corpus, teacher vectors and features are built as on
a fresh machine), and the wall time of each command is recorded. Results: experiments/demo_timing.json (raw) and
the table printed at the end (pasted into experiments/embedded_demo.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from recipe_ablations import env  # make demo's offline environment (experiments/ is on the path)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "demo_timing.json"

# The overrides that turn today's embedded default (conf/experiment/embedded.yaml) back into the previous one: the
# 3-layer student from layers 0, 2, 5, stage 2 450 steps at lr 1e-3 (experiments/recipe_ablations.md, round 8).
RECIPES = {
    "current": [],
    "previous": [
        "model.num_layers=3",
        "model.layers=[0,2,5]",
        "stages.stage2.module.optimizer.lr=1e-3",
        "stages.stage2.steps=450",
    ],
}


def commands(name: str, overrides: list[str]) -> dict[str, list[str]]:
    run_name = f"demo_timing/{name}"
    cache = f"paths.cache_dir=outputs/demo_timing/{name}/cache"
    return {
        "train.py -m stage=1,2,3": [
            "train.py",
            "--multirun",
            "stage=1,2,3",
            f"run_name={run_name}",
            cache,
            *overrides,
        ],
        "report.py": ["report.py", f"run_name={run_name}"],
        "evaluate.py eval=demo": ["evaluate.py", "eval=demo", f"run_name={run_name}"],
    }


def time_recipe(name: str) -> dict[str, float]:
    shutil.rmtree(REPO / "outputs" / "demo_timing" / name, ignore_errors=True)  # cold: no run, no cache
    seconds = {}
    for label, args in commands(name, RECIPES[name]).items():
        print(f"$ python {' '.join(args)}", flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=REPO, env=env(), check=True)
        seconds[label] = round(time.perf_counter() - start, 1)
    seconds["total"] = round(sum(seconds.values()), 1)
    return seconds


def table(results: dict[str, dict]) -> str:
    names = list(results)
    phases = list(next(iter(results.values()))["seconds"])
    lines = ["| command | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for phase in phases:
        cells = [
            f"{int(results[n]['seconds'][phase] // 60)}:{results[n]['seconds'][phase] % 60:04.1f}"
            for n in names
        ]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=list(RECIPES), help="time this recipe alone")
    args = parser.parse_args()
    results = {}
    for name in [args.only] if args.only else list(RECIPES):
        results[name] = {"overrides": RECIPES[name], "seconds": time_recipe(name), "cpus": os.cpu_count()}
        RESULTS.write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
