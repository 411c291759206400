"""How far each stage moves the student past the one before it, and how much that varies with the seed: the
margins of tests/test_pipeline.py::test_each_stage_brings_the_student_closer_than_the_one_before come from here.

    python experiments/pipeline_seed_spread.py                 # seeds 0-4 -> experiments/pipeline_seed_spread.{md,json}
    python experiments/pipeline_seed_spread.py --seeds 0 1 2

Each seed runs the test's own small pipeline (`tests.test_pipeline.stages_run`: stages 1-3, 30 steps each, batch
16, stage 3's heads starting random, on the standard library's email and logging docstrings) through `train.py -m stage=1,2,3` and scores it with
`jasper.evaluation.fidelity.report` on its held-out texts (the seed also draws the held-out split). The table gives, per
comparison the test makes, each seed's gain, the mean, the standard deviation and the smallest gain; a margin is
sound when it sits below the smallest gain and the mean stands several standard deviations above it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402

import jasper.training.resolvers  # noqa: E402,F401  (resolvers)
from jasper.core.tables import load_json  # noqa: E402
from jasper.data.datamodule import clean_rows  # noqa: E402
from jasper.data.sources import PythonDocstrings  # noqa: E402
from jasper.evaluation.fidelity import report  # noqa: E402
from tests.test_pipeline import STAGE_GAINS, stages_run, train  # noqa: E402


def corpus(folder: Path) -> str:
    """The tests' corpus file (tests/conftest.py::corpus_file)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts, _ = clean_rows(
        [t for sub in ("email", "logging") for t in PythonDocstrings(root=str(stdlib / sub))]
    )
    path = folder / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def gains(run_dir: Path, corpus_file: str, cache: Path, seed: int) -> dict[str, float]:
    overrides = [*stages_run(run_dir, corpus_file, cache), f"seed={seed}"]
    train(["--multirun", "stage=1,2,3", *overrides])
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        report(compose("train", overrides=[*overrides, "paths.output_dir=unused"]))
    rows = {row.model.split("/")[-1]: row.metrics for row in load_json(run_dir / "fidelity.json")}
    return {
        f"{after} - {before}: {metric}": rows[after][metric] - rows[before][metric]
        for before, after, metric, _ in STAGE_GAINS
    }


def table(per_seed: dict[str, dict[str, float]]) -> str:
    seeds = sorted(per_seed, key=int)
    header = ["gain", *(f"seed {s}" for s in seeds), "mean", "sd", "min", "test margin"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for before, after, metric, margin in STAGE_GAINS:
        key = f"{after} - {before}: {metric}"
        values = [per_seed[s][key] for s in seeds]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        cells = [key, *(f"{v:+.4f}" for v in values), f"{statistics.mean(values):+.4f}", f"{sd:.4f}"]
        lines.append("| " + " | ".join([*cells, f"{min(values):+.4f}", f"{margin:+.4f}"]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "pipeline_seed_spread.md")
    args = parser.parse_args()
    results = args.out.with_suffix(".json")  # per seed, kept: a rerun runs only the seeds it lacks
    per_seed = json.loads(results.read_text()) if results.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        corpus_file = corpus(tmp_path)
        for seed in args.seeds:
            if str(seed) in per_seed:
                continue
            per_seed[str(seed)] = gains(tmp_path / f"seed{seed}", corpus_file, tmp_path / "cache", seed)
            results.write_text(json.dumps(per_seed, indent=1, sort_keys=True) + "\n")
            print(f"seed {seed}: {per_seed[str(seed)]}", flush=True)
    text = table({s: per_seed[str(s)] for s in map(str, args.seeds)})
    print(text)
    args.out.write_text(
        "# Seed spread of the small pipeline's stage-to-stage gains\n\n"
        "`python experiments/pipeline_seed_spread.py` (this file is its output; per-seed values in the .json "
        "beside it). Held-out fidelity to the teacher (tests/test_pipeline.py's small run, one held-out split per "
        "seed): each stage minus the one before it.\n\n" + text + "\n"
    )


if __name__ == "__main__":
    main()
