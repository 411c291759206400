"""Per-teacher view of experiment=jasper_analogue: what the student's FC1 learned from each of its two teachers.

FC1 is 1152-d: its first 768 outputs are trained towards all-mpnet-base-v2, the last 384 towards the student's own
init (all-MiniLM-L6-v2), each teacher L2-normalised and the concatenation renormalised (jasper.models.teachers). This
script scores, on the STS-B dev and SICK-R sentences, every stage's FC1, its two slices on their own, the two
teachers and their concatenation (the distillation target), and the fidelity of each slice to its teacher (mean
cosine over the sentences). A second table gives the same fidelities on the run's own held-out training texts: a
slice close to its teacher there and far on the dev sentences learned the corpus, not the teacher (the text
limits it); far on both, the student has not learned that teacher yet (budget or weighting limits it). It explains
the verdict in experiments/jasper_analogue.md.

    python experiments/jasper_analogue_fidelity.py [outputs/jasper_analogue] [--dev-dir ../shared/data/dev]

Prints a Markdown table; needs the mpnet extra (`make install-mpnet`) and the dev sets.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from jasper.core.metrics import spearman
from jasper.evaluation.fidelity import run_config
from jasper.evaluation.loaders import load_sts_tsv
from jasper.models.packaged import packaged_minilm, packaged_mpnet
from jasper.storage.checkpoints import load_student, read_student, stage_students

SETS = {"STS-B dev": "stsb-dev.tsv", "SICK-R": "sickr.tsv"}


def sts_score(vectors: dict[str, torch.Tensor], pairs) -> float:
    a = F.normalize(torch.stack([vectors[p.s1] for p in pairs]), dim=-1)
    b = F.normalize(torch.stack([vectors[p.s2] for p in pairs]), dim=-1)
    return spearman((a * b).sum(-1).numpy(), [p.score for p in pairs])


def by_text(texts: list[str], matrix: torch.Tensor) -> dict[str, torch.Tensor]:
    return dict(zip(texts, matrix, strict=True))


def held_out_texts(students: list[tuple[str, Path]]) -> list[str] | None:
    """The run's held-out training texts, rebuilt from its saved config as report.py does (no teacher is run);
    None for a run without one (not trained with train.py)."""
    if not (students[0][1].parent / ".hydra" / "config.yaml").is_file():
        return None
    import jasper.training.resolvers  # noqa: F401  (the saved config's resolvers)
    from jasper.training.assembly import assemble

    return assemble(run_config(students), student=False).datamodule.prepare_texts()[1]


def slice_fidelity(fc1: torch.Tensor, mpnet: torch.Tensor, init: torch.Tensor) -> tuple[float, float]:
    """Mean cosine of FC1's mpnet slice to mpnet and of its init slice to the init."""
    dim = mpnet.shape[1]
    to_mpnet, to_init = F.normalize(fc1[:, :dim], dim=-1), F.normalize(fc1[:, dim:], dim=-1)
    return float((to_mpnet * mpnet).sum(-1).mean()), float((to_init * init).sum(-1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default="outputs/jasper_analogue")
    parser.add_argument("--dev-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/dev"))
    parser.add_argument(
        "--max-pairs", type=int, default=None, help="the first N pairs of each set (default: all)"
    )
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer  # heavy; only this script needs it

    pairs = {name: load_sts_tsv(Path(args.dev_dir) / file)[: args.max_pairs] for name, file in SETS.items()}
    texts = sorted({t for ps in pairs.values() for p in ps for t in (p.s1, p.s2)})
    teachers = {
        "all-mpnet-base-v2": SentenceTransformer(packaged_mpnet(), device="cpu"),
        "all-MiniLM-L6-v2 (init)": SentenceTransformer(packaged_minilm(), device="cpu"),
    }
    mpnet_dim = teachers["all-mpnet-base-v2"].get_embedding_dimension()
    target_dim = sum(model.get_embedding_dimension() for model in teachers.values())
    students = stage_students(args.run_dir)
    if not students:
        raise SystemExit(f"no stage*/student.pt under {args.run_dir}: train the run first (docstring)")
    for _, path in students:  # before the slow teacher encoding: a wrong run fails at once
        fc1_dim = int(read_student(path).state["fc1.weight"].shape[0])
        if fc1_dim != target_dim:
            raise SystemExit(
                f"{path}: FC1 is {fc1_dim}-d, not the {target_dim}-d of mpnet + MiniLM "
                "(experiment=jasper_analogue's teachers=mpnet_minilm)"
            )

    def encode_teachers(texts: list[str]) -> dict[str, torch.Tensor]:
        return {
            name: model.encode(texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True).cpu()
            for name, model in teachers.items()
        }

    corpus = held_out_texts(students)
    if corpus is not None:
        corpus_mpnet, corpus_init = encode_teachers(corpus).values()
    corpus_rows = []
    teacher_vectors = encode_teachers(texts)
    mpnet, init = teacher_vectors.values()
    target = F.normalize(torch.cat([mpnet, init], dim=-1), dim=-1)
    rows = [(name, by_text(texts, v), None, None) for name, v in teacher_vectors.items()]
    rows.append(("target: both concatenated", by_text(texts, target), None, None))
    for stage, path in students:
        student, _ = load_student(path)
        fc1 = student.encode(texts, "fc1", show_progress=True)
        to_mpnet, to_init = F.normalize(fc1[:, :mpnet_dim], dim=-1), F.normalize(fc1[:, mpnet_dim:], dim=-1)
        rows.append((f"{stage} FC1", by_text(texts, fc1), *slice_fidelity(fc1, mpnet, init)))
        if corpus is not None:
            corpus_fc1 = student.encode(corpus, "fc1")
            corpus_rows.append((stage, *slice_fidelity(corpus_fc1, corpus_mpnet, corpus_init)))
        rows.append((f"{stage} FC1[:768] (mpnet part)", by_text(texts, to_mpnet), None, None))
        rows.append((f"{stage} FC1[768:] (init part)", by_text(texts, to_init), None, None))

    print("| vectors | " + " | ".join(SETS) + " | cos(FC1[:768], mpnet) | cos(FC1[768:], init) |")
    print("|---|" + "---|" * (len(SETS) + 2))
    for name, vectors, to_mpnet, to_init in rows:
        scores = " | ".join(f"{sts_score(vectors, ps):.4f}" for ps in pairs.values())
        fid = " | ".join("" if f is None else f"{f:.4f}" for f in (to_mpnet, to_init))
        print(f"| {name} | {scores} | {fid} |")
    if corpus is None:
        print(
            f"\nNo held-out table: {students[0][1].parent}/.hydra/config.yaml (saved by train.py) is missing"
        )
        return
    print(f"\nFidelity on the run's {len(corpus)} held-out training texts vs the dev sentences above:\n")
    print("| stage | cos(FC1[:768], mpnet) held out | on dev | cos(FC1[768:], init) held out | on dev |")
    print("|---|---|---|---|---|")
    on_dev = {name.split()[0]: (m, i) for name, _, m, i in rows if name.endswith(" FC1")}
    for stage, to_mpnet, to_init in corpus_rows:
        dev_mpnet, dev_init = on_dev[stage]
        print(f"| {stage} | {to_mpnet:.4f} | {dev_mpnet:.4f} | {to_init:.4f} | {dev_init:.4f} |")


if __name__ == "__main__":
    main()
