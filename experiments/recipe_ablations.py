"""Recipe ablations on the embedded default: each variant changes one knob of the base recipe at a fixed budget.

    python experiments/recipe_ablations.py                 # run every missing variant, then write the report
    python experiments/recipe_ablations.py base s2_lr_3e-4 # only these (and what they start from)
    python experiments/recipe_ablations.py --report        # rewrite recipe_ablations.md / .png from the results

A variant trains only the stages it changes and starts from the base run's previous stage (`start`), so stage-2
knobs are compared after stage 2 (FC1) and stage-3 knobs after stage 3 (every head). Every stage is a `train.py`
subprocess (the real entry point, the command is recorded); students are evaluated in-process with the demo's
fixed dev subsets (`eval=demo`). Finished stages and evaluations are kept, so an interrupted sweep resumes.
Results: experiments/recipe_ablations.json (raw), .md (table), .png (scores by variant).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "outputs" / "ablations"
RESULTS = REPO / "experiments" / "recipe_ablations.json"

# The base recipe every variant departs from (the embedded default plus these overrides).
BASE = [
    "teachers=minilm",  # the 6-layer MiniLM + the student's own init (768-d), as the embedded default had then
    "data=english_prose",
    "data.source.sources=[gcide,docstrings]",
    "data.max_texts=8000",
    "stages.stage1.module.closed_form=1e-3",
    "stages.stage2.steps=300",
    "stages.stage2.module.optimizer.lr=1e-4",
    # stage 3 as it was before round 4 made the default's a frozen-encoder stage 3 of 600 steps
    "stages.stage3.module.train_encoder=true",
    "stages.stage3.feature_cache=false",
    "stages.stage3.steps=150",
    "stages.stage3.val_every=50",
    "stages.stage3.checkpoint_every=50",
    # the student and stage 3 as before round 6 made the default's the layers [0, 2, 5] and heads-only (and round 8
    # its 4 layers [0, 1, 3, 5])
    "model.num_layers=3",
    "model.layers=null",
    "stages.stage3.module.keep_fc1_loss=true",
]


@dataclass(frozen=True)
class Variant:
    what: str
    overrides: list[str] = field(default_factory=list)
    stages: tuple[int, ...] = (1, 2, 3)
    start: str | None = None  # the variant whose stage (first stage - 1) this one starts from


# The embedded default's departures from BASE (conf/experiment/embedded.yaml, conf/train.yaml). Since the loss
# ablations below, the default trains stage 2 with the cosine loss alone (stages.stage2.loss); the variants that ran
# before that name the paper's three terms for stage 2 (THREE_TERMS) so that they rerun as they ran.
DEFAULT = ["teachers=minilm6", "data.source.sources=[gcide]", "stages.stage2.module.optimizer.lr=1e-3"]
THREE_TERMS = ["stages.stage2.loss.similarity=200", "stages.stage2.loss.relative_similarity=20"]
COSINE_ONLY = ["loss.similarity=0", "loss.relative_similarity=0"]

# Stage 3 on the frozen encoder: FC1 and the heads train on the stage-2 encoder's cached pooled states.
FROZEN_S3 = ["stages.stage3.module.train_encoder=false", "stages.stage3.feature_cache=true"]

# The embedded default's stage 2 and stage 3 since round 4 (stage 2 450 steps, stage 3 frozen for 600).
DEFAULT_S2_S3 = [
    "stages.stage2.steps=450",
    *FROZEN_S3,
    "stages.stage3.steps=600",
    "stages.stage3.val_every=200",
    "stages.stage3.checkpoint_every=200",
]

# Round 6's default (layers [0, 2, 5], stage 3 on the heads alone), round 7's best stage 2 on it (lr 5e-4), and
# round 8's 4-layer student on that.
L025_HEADS_ONLY = [
    *DEFAULT,
    *DEFAULT_S2_S3,
    "model.layers=[0,2,5]",
    "stages.stage3.module.keep_fc1_loss=false",
]
R7_BEST = [*L025_HEADS_ONLY, "stages.stage2.module.optimizer.lr=5e-4"]
FOUR_LAYERS = [*R7_BEST, "model.num_layers=4", "model.layers=[0,1,3,5]"]

MIX_SOURCES = ["gcide", "chitchat", "sharegpt_questions", "sharegpt_passages"]


def mix(*shares: int) -> list[str]:
    """data=english_mix with these shares (in MIX_SOURCES order; a zero share leaves a source out)."""
    share_text = ",".join(f"{name}:{share}" for name, share in zip(MIX_SOURCES, shares, strict=True))
    return ["data=english_mix", "data.source.sources=null", f"data.source.shares={{{share_text}}}"]


def only(source: str) -> list[str]:
    """One corpus source alone, all its kept texts."""
    return ["data=english_mix", f"data.source.sources=[{source}]", "data.source.shares=null"]


VARIANTS: dict[str, Variant] = {
    "base": Variant(
        "base: english_prose (gcide + docstrings), both teachers, closed-form stage 1 + 150 polishing steps, stage 2 lr 1e-4"
    ),
    "s1_trained": Variant(
        "stage 1 trained from a random FC1 (no closed form)",
        ["stages.stage1.module.closed_form=null"],
        stages=(1,),
    ),
    "s1_closed_only": Variant(
        "stage 1 closed form, no polishing steps", ["stages.stage1.steps=0"], stages=(1,)
    ),
    "s2_lr_1e-3": Variant(
        "stage 2 lr 1e-3", ["stages.stage2.module.optimizer.lr=1e-3"], stages=(2,), start="base"
    ),
    "s2_lr_3e-4": Variant(
        "stage 2 lr 3e-4", ["stages.stage2.module.optimizer.lr=3e-4"], stages=(2,), start="base"
    ),
    "s3_self_distilled": Variant(
        "stage 3 heads self-distilled from FC1",
        ["stages.stage3.module.head_teacher=fc1"],
        stages=(3,),
        start="base",
    ),
    "teacher_minilm6_only": Variant(
        "teachers: the 6-layer MiniLM alone (no student-init teacher; FC1 384-d)", ["teachers=minilm6"]
    ),
    "t6_s2_lr_1e-3": Variant(
        "teachers: 6-layer alone + stage 2 lr 1e-3",
        ["teachers=minilm6", "stages.stage2.module.optimizer.lr=1e-3"],
        stages=(2, 3),
        start="teacher_minilm6_only",
    ),
    "t6_s2_lr_3e-4": Variant(
        "teachers: 6-layer alone + stage 2 lr 3e-4",
        ["teachers=minilm6", "stages.stage2.module.optimizer.lr=3e-4"],
        stages=(2, 3),
        start="teacher_minilm6_only",
    ),
    "make_demo": Variant(
        "the embedded default before the loss ablations, as `make demo` ran it (minilm6, GCIDE only, stage 2 lr 1e-3)",
        [*DEFAULT, *THREE_TERMS],
    ),
    "default_s2_600": Variant(
        "the new embedded default with stage 2 600 steps (x2)",
        [*DEFAULT, *THREE_TERMS, "stages.stage2.steps=600"],
        stages=(2, 3),
        start="make_demo",
    ),
    "default_s2_lr_3e-3": Variant(
        "the new embedded default with stage 2 lr 3e-3",
        [*DEFAULT[:2], *THREE_TERMS, "stages.stage2.module.optimizer.lr=3e-3"],
        stages=(2, 3),
        start="make_demo",
    ),
    "default_s2_600_16k": Variant(
        "the new embedded default with stage 2 600 steps and 16,000 texts",
        [*DEFAULT, "stages.stage2.steps=600", "data.max_texts=16000"],
    ),
    "default_s2_600_lr_2e-3": Variant(
        "the new embedded default with stage 2 600 steps at lr 2e-3 (30 warmup steps)",
        [
            *DEFAULT[:2],
            *THREE_TERMS,
            "stages.stage2.module.optimizer.lr=2e-3",
            "stages.stage2.steps=600",
            "stages.stage2.warmup_steps=30",
        ],
        stages=(2, 3),
        start="make_demo",
    ),
    "default_s1_closed_only": Variant(
        "the new embedded default (minilm6, gcide, stage 2 lr 1e-3) with stage 1 in closed form only (0 steps)",
        [*DEFAULT, *THREE_TERMS, "stages.stage1.steps=0"],
    ),
    "d_s2_lr_paper": Variant(
        "default (stage 2 on the cosine loss), stage 2 lr 8e-5 (paper)",
        [*DEFAULT[:2], "stages.stage2.module.optimizer.lr=8e-5"],
        stages=(2,),
        start="make_demo",
    ),
    "d_s2_batch_128": Variant(
        "default (stage 2 on the cosine loss), stage 2 batch 128 for 75 steps (equal texts)",
        [*DEFAULT, "stages.stage2.batch_size=128", "stages.stage2.steps=75", "stages.stage2.warmup_steps=3"],
        stages=(2,),
        start="make_demo",
    ),
    "d_s2_batch_512": Variant(
        "default (stage 2 on the cosine loss), stage 2 batch 512 for 19 steps (equal texts)",
        [*DEFAULT, "stages.stage2.batch_size=512", "stages.stage2.steps=19", "stages.stage2.warmup_steps=1"],
        stages=(2,),
        start="make_demo",
    ),
    "d_s2_random_batches": Variant(
        "default (stage 2 on the cosine loss), stage 2 random batches (no length buckets)",
        [*DEFAULT, "data.length_buckets=false"],
        stages=(2,),
        start="make_demo",
    ),
    "d_s2_cos_only": Variant(
        "default, stage 2 loss: cosine only",
        [*DEFAULT, *COSINE_ONLY],
        stages=(2,),
        start="make_demo",
    ),
    "d_s3_cos_only": Variant(
        "default with the cosine loss alone, stage 3 after d_s2_cos_only (the heads get no loss: cosine needs the teacher's width, so they stay FC1's prefix)",
        [*DEFAULT, *COSINE_ONLY],
        stages=(3,),
        start="d_s2_cos_only",
    ),
    "d_cos_only_600": Variant(
        "default with the cosine loss alone and stage 2 600 steps",
        [*DEFAULT, *COSINE_ONLY, "stages.stage2.steps=600"],
        stages=(2,),
        start="make_demo",
    ),
    "d_light_sim": Variant(
        "default, stage 2 loss weights 10 / 20 / 2 (the in-batch terms at a tenth)",
        [*DEFAULT, "stages.stage2.loss.similarity=20", "stages.stage2.loss.relative_similarity=2"],
        stages=(2,),
        start="make_demo",
    ),
    "cos_only_all": Variant(
        "default with the cosine loss alone in stages 1 (polishing) and 2",
        [*DEFAULT, *COSINE_ONLY],
        stages=(1, 2),
    ),
    "d_cos2_jasper3": Variant(
        "default with the cosine loss alone in stage 2, the paper's three terms in stage 3 (after d_s2_cos_only)",
        DEFAULT,
        stages=(3,),
        start="d_s2_cos_only",
    ),
    "d_s2_cos_sim": Variant(
        "default before the loss ablations, stage 2 loss: cosine + similarity",
        [*DEFAULT, "stages.stage2.loss.similarity=200", "stages.stage2.loss.relative_similarity=0"],
        stages=(2,),
        start="make_demo",
    ),
    "d_s2_unfreeze_1": Variant(
        "default (stage 2 on the cosine loss), stage 2 unfreezes the last layer only (default: 3, all of this student)",
        [*DEFAULT, "stages.stage2.module.unfreeze_layers=1"],
        stages=(2,),
        start="make_demo",
    ),
    "d_s2_bucket_window_4": Variant(
        "default (stage 2 on the cosine loss), stage 2 buckets mixed: length-sorted within windows of 4 random "
        "batches (default 50; 1 = random batches)",
        [*DEFAULT, "data.bucket_window=4"],
        stages=(2,),
        start="make_demo",
    ),
    "d_s3_prefix": Variant(
        "default, stage 3 prefix (Matryoshka) heads",
        [*DEFAULT, "model.mrl_mode=prefix"],
        stages=(3,),
        start="make_demo",
    ),
    "corpus_python_docs": Variant("corpus: stdlib docstrings (the old default)", ["data=python_docs"]),
    # Round 3: the corpus (data=english_mix's sources), every stage retrained from the current default.
    **{
        f"mix_{label}": Variant(f"default on {what}", [*DEFAULT, *corpus])
        for label, what, corpus in [
            ("chitchat", "chitchat alone", only("chitchat")),
            ("questions", "ShareGPT questions alone", only("sharegpt_questions")),
            ("passages", "ShareGPT passages (80 words) alone", only("sharegpt_passages")),
            ("4211", "english_mix 40/20/10/30 (gcide/chitchat/questions/passages)", mix(4, 2, 1, 3)),
            ("3214", "english_mix 30/20/10/40", mix(3, 2, 1, 4)),
            ("5203", "english_mix 50/20/0/30 (no questions)", mix(5, 2, 0, 3)),
            ("6202", "english_mix 60/20/0/20 (GCIDE-heavy, no questions)", mix(6, 2, 0, 2)),
            ("7003", "english_mix 70/0/0/30 (GCIDE + passages)", mix(7, 0, 0, 3)),
            ("2224", "english_mix 20/20/20/40", mix(2, 2, 2, 4)),
            (
                "4211_p40",
                "english_mix 40/20/10/30, passages cut to 40 words",
                [*mix(4, 2, 1, 3), "data.source.passage_words=40"],
            ),
            (
                "4211_p120",
                "english_mix 40/20/10/30, passages cut to 120 words",
                [*mix(4, 2, 1, 3), "data.source.passage_words=120"],
            ),
            (
                "4211_p120_len256",
                "english_mix 40/20/10/30, passages cut to 120 words, training length 256 tokens",
                [*mix(4, 2, 1, 3), "data.source.passage_words=120", "model.max_length=256"],
            ),
            (
                "4211_len256",
                "english_mix 40/20/10/30, training length 256 tokens",
                [*mix(4, 2, 1, 3), "model.max_length=256"],
            ),
        ]
    },
    "corpus_gcide_only": Variant("corpus: GCIDE only", ["data.source.sources=[gcide]"]),
    # Round 4: toward the demo targets at the demo's wall time (issue 22): longer stage 2 on the mixes, paid for by
    # a cheaper stage 3.
    "r4_7003_s2_600": Variant(
        "english_mix 70/0/0/30 (GCIDE + passages), stage 2 600 steps",
        [*DEFAULT, *mix(7, 0, 0, 3), "stages.stage2.steps=600"],
        stages=(2,),
        start="mix_7003",
    ),
    "r4_7003_s3": Variant(
        "english_mix 70/0/0/30, stage 2 600 steps, stage 3 as the default (after r4_7003_s2_600)",
        [*DEFAULT, *mix(7, 0, 0, 3)],
        stages=(3,),
        start="r4_7003_s2_600",
    ),
    "r4_7003_s3_frozen": Variant(
        "english_mix 70/0/0/30, stage 2 600 steps, stage 3 on the frozen encoder (FC1 + heads on cached features)",
        [*DEFAULT, *mix(7, 0, 0, 3), *FROZEN_S3],
        stages=(3,),
        start="r4_7003_s2_600",
    ),
    "r4_7003_s3_frozen_600": Variant(
        "english_mix 70/0/0/30, stage 2 600 steps, stage 3 on the frozen encoder for 600 steps",
        [*DEFAULT, *mix(7, 0, 0, 3), *FROZEN_S3, "stages.stage3.steps=600"],
        stages=(3,),
        start="r4_7003_s2_600",
    ),
    "r4_default_s1": Variant("the embedded default's stage 1 (GCIDE)", DEFAULT, stages=(1,)),
    "r4_gcide_s2_450": Variant(
        "the embedded default, stage 2 450 steps",
        [*DEFAULT, "stages.stage2.steps=450"],
        stages=(2,),
        start="r4_default_s1",
    ),
    "r4_gcide_450_frozen": Variant(
        "the embedded default, stage 2 450 steps, stage 3 on the frozen encoder for 600 steps (the new default)",
        [
            *DEFAULT,
            *FROZEN_S3,
            "stages.stage3.steps=600",
            "stages.stage3.val_every=200",
            "stages.stage3.checkpoint_every=200",
        ],
        stages=(3,),
        start="r4_gcide_s2_450",
    ),
    # Round 5: the 37 s the frozen stage 3 saved, spent on ~100 more stage-2 steps (its curve was still rising).
    "r5_gcide_s2_550": Variant(
        "the embedded default, stage 2 550 steps",
        [*DEFAULT, "stages.stage2.steps=550"],
        stages=(2,),
        start="r4_default_s1",
    ),
    "r5_gcide_550_frozen": Variant(
        "the embedded default, stage 2 550 steps, stage 3 on the frozen encoder for 600 steps",
        [
            *DEFAULT,
            *FROZEN_S3,
            "stages.stage3.steps=600",
            "stages.stage3.val_every=200",
            "stages.stage3.checkpoint_every=200",
        ],
        stages=(3,),
        start="r5_gcide_s2_550",
    ),
    # Round 6: which 3 of the teacher's 6 layers the student starts from (model.layers), the rest as the default.
    **{
        f"r6_layers_{''.join(map(str, layers))}": Variant(
            f"the embedded default, the student from the teacher's layers {list(layers)}",
            [*DEFAULT, *DEFAULT_S2_S3, f"model.layers=[{','.join(map(str, layers))}]"],
        )
        for layers in [(0, 2, 4), (1, 3, 5), (0, 2, 5), (0, 3, 5)]
    },
    # Round 7: the stage-2 lr again, now that the student starts far closer (layers [0, 2, 5], the default's).
    **{
        f"r7_s2_lr_{lr}": Variant(
            f"the embedded default (layers [0, 2, 5], stage 3 heads alone), stage 2 at lr {lr}",
            [*L025_HEADS_ONLY, f"stages.stage2.module.optimizer.lr={lr}"],
            stages=(2, 3),
            start="r6_layers_025",
        )
        for lr in ("2.5e-4", "5e-4", "2e-3")
    },
    # Round 8: one-word edits of the training texts (data.augment.edit_share), on top of round 7's stage 2 at 5e-4.
    **{
        f"r8_edits_{share}": Variant(
            f"the embedded default at stage-2 lr 5e-4, {share:.0%} of texts followed by a one-word edit",
            [*R7_BEST, f"data.augment.edit_share={share}"],
            stages=(2, 3),
            start="r6_layers_025",
        )
        for share in (0.25, 0.5)
    },
    # Round 8: does a fourth layer (capacity) move SICK-R, which no corpus, lr or edit has moved past 0.72?
    "r8_layers_0135": Variant(
        "the embedded default at stage-2 lr 5e-4, a 4-layer student from the teacher's layers [0, 1, 3, 5]",
        FOUR_LAYERS,
    ),
    # The fourth layer costs time; fewer stage-2 steps pay for it (the demo may take no longer than before).
    **{
        f"r8_l4_s2_{steps}": Variant(
            f"the 4-layer student [0, 1, 3, 5] at stage-2 lr 5e-4, stage 2 {steps} steps",
            [*FOUR_LAYERS, f"stages.stage2.steps={steps}"],
            stages=(2, 3),
            start="r8_layers_0135",
        )
        for steps in (250, 300)
    },
    # The new mix again, on the 4-layer default: does the deeper student keep SICK-R with the passages in?
    "r8_l4_mix_7003": Variant(
        "the 4-layer default (stage 2 300 steps) on english_mix 70/0/0/30 (GCIDE + passages)",
        [*FOUR_LAYERS, "stages.stage2.steps=300", *mix(7, 0, 0, 3)],
    ),
    "r6_025_s3_heads_only": Variant(
        "the student from layers [0, 2, 5], stage 3 training the heads alone (FC1 stays stage 2's)",
        L025_HEADS_ONLY,
        stages=(3,),
        start="r6_layers_025",
    ),
}


def env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "offline",
    }


def train(name: str, variant: Variant, last: int = 3) -> list[dict]:
    """Run the variant's missing stages up to ``last``; return one record per stage (command, wall seconds)."""
    records = []
    for stage in (k for k in variant.stages if k <= last):
        out = RUNS / name / f"stage{stage}"
        command = [
            sys.executable,
            "train.py",
            f"stage={stage}",
            f"run_name=ablations/{name}",
            *BASE,
            *variant.overrides,
        ]
        if variant.start and stage == variant.stages[0] and stage > 1:
            command.append(
                f"stages.stage{stage}.init_from={RUNS / variant.start / f'stage{stage - 1}' / 'student.pt'}"
            )
        if not (out / "student.pt").exists():
            start = time.perf_counter()
            print("$", " ".join(command[1:]), flush=True)
            subprocess.run(command, cwd=REPO, env=env(), check=True)
            records.append(
                {
                    "stage": stage,
                    "command": " ".join(["python", *command[1:]]),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
    return records


def evaluate(paths: dict[str, Path]) -> dict[str, dict]:
    """Every head of each student on the demo's dev subsets: {name: {head: {metric: value}}}."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import jasper.training.resolvers  # noqa: F401  (resolvers)
    from jasper.evaluation.runner import evaluate as run_evaluation

    with initialize_config_dir(str(REPO / "conf" / "evaluate"), version_base="1.3"):
        cfg = compose("evaluate", overrides=["eval=demo"])
    config = OmegaConf.to_container(cfg, resolve=False)
    config["eval"] = OmegaConf.to_container(cfg.eval, resolve=True)
    config.update(
        models={n: str(p) for n, p in paths.items()}, teacher=None, run_name=None, out_dir=str(RUNS / "eval")
    )
    rows, _ = run_evaluation(config, REPO)
    scores: dict[str, dict] = {}
    for row in rows:
        scores.setdefault(row.model, {})[row.head] = row.metrics
    return scores


METRICS = [
    "stsb-dev",
    "sickr",
    "dbpedia ndcg@10",
]  # the keys of eval=demo's results (Spearman, Spearman, nDCG@10)


def rows(results: dict) -> list[tuple[str, str, dict]]:
    """(label, what, head scores) per variant and evaluated stage, in run order."""
    return [
        (f"{name}/{stage}", result["what"], heads)
        for name, result in results.items()
        for stage, heads in result["scores"].items()
    ]


def write_report(results: dict) -> None:
    """recipe_ablations.table.md (FC1 and heads of each variant's stages) and .png (FC1 scores by variant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    header = "| variant/stage | what | " + " | ".join(f"fc1 {m}" for m in METRICS) + " | heads stsb-dev |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    table = rows(results)
    for label, what, heads in table:
        fc1 = [heads["fc1"][m] for m in METRICS]
        trained_heads = label.endswith("stage3")
        head_sts = ", ".join(f"{h}: {heads[h]['stsb-dev']:.3f}" for h in heads if h != "fc1")
        lines.append(
            f"| {label} | {what} | "
            + " | ".join(f"{v:.4f}" for v in fc1)
            + f" | {head_sts if trained_heads else '-'} |"
        )
    RESULTS.with_suffix(".table.md").write_text("\n".join(lines) + "\n")
    figure, axis = plt.subplots(figsize=(max(8, len(table) * 0.7), 4.8))
    width = 0.8 / len(METRICS)
    for i, name in enumerate(METRICS):
        values = [heads["fc1"][name] for _, _, heads in table]
        axis.bar([j + i * width for j in range(len(table))], values, width, label=name)
    axis.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(table))], [r[0] for r in table], rotation=60, ha="right"
    )
    axis.set_ylabel("FC1 score (eval=demo subsets)")
    axis.legend(loc="upper left", ncol=3)
    axis.set_ylim(0, 1)
    figure.tight_layout()
    figure.savefig(RESULTS.with_suffix(".png"), dpi=120)


def load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="variants to run (default: all)")
    parser.add_argument("--report", action="store_true", help="only rewrite the report from the results")
    args = parser.parse_args()
    results = load()
    if not args.report:
        names = args.names or list(VARIANTS)
        unknown = set(names) - set(VARIANTS)
        if unknown:
            raise SystemExit(f"unknown variant(s) {sorted(unknown)}; choose from {list(VARIANTS)}")
        for name in names:
            variant = VARIANTS[name]
            if variant.start and variant.start not in names and variant.start not in results:
                names.insert(names.index(name), variant.start)
        for name in dict.fromkeys(names):
            if name in results:
                continue
            variant = VARIANTS[name]
            if variant.start:  # only the stages this variant starts from (their scores are in the results)
                train(variant.start, VARIANTS[variant.start], last=variant.stages[0] - 1)
            runs = train(name, variant)
            students = {f"stage{k}": RUNS / name / f"stage{k}" / "student.pt" for k in variant.stages}
            scores = evaluate(students)
            results = load()  # another process may have written meanwhile
            results[name] = {
                "what": variant.what,
                "overrides": variant.overrides,
                "stages": list(variant.stages),
                "start": variant.start,
                "runs": runs,
                "scores": scores,
            }
            RESULTS.write_text(json.dumps(results, indent=1))
            print(name, json.dumps({k: v["fc1"] for k, v in scores.items()}), flush=True)
    write_report(results)


if __name__ == "__main__":
    main()
