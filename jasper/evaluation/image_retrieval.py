"""Image <-> caption retrieval on held-out pairs: recall@1/5/10 both ways, reported like the text evaluation.

Pair ``i`` is image ``i`` with caption ``i``; a query is right at ``k`` when its own pair is among the ``k``
nearest candidates (cosine). With N held-out pairs, chance recall@1 is 1/N.

    python -m jasper.evaluation.image_retrieval --student outputs/default/stage4/student.pt \
        --vision outputs/default/stage4/vision.pt [--folder DIR_WITH_index.jsonl] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from jasper.evaluation.report import ResultRow, markdown_table, write_report

log = logging.getLogger(__name__)
KS = (1, 5, 10)


def recall_at_k(similarity: Tensor, ks: Sequence[int] = KS) -> dict[int, float]:
    """``similarity[i, j]`` of query ``i`` and candidate ``j``; the right candidate of query ``i`` is ``j = i``."""
    n = similarity.shape[0]
    if similarity.shape != (n, n):
        raise ValueError(f"expected a square similarity matrix, got {tuple(similarity.shape)}")
    right = similarity.diagonal().unsqueeze(1)
    rank = (similarity > right).sum(dim=1)  # candidates scored strictly above the right one (ties favour it)
    return {k: float((rank < k).float().mean()) for k in ks}


def pair_recall(image_vecs: Tensor, caption_vecs: Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """``image->caption R@k`` and ``caption->image R@k`` for aligned ``(N, d)`` vectors."""
    similarity = image_vecs.float() @ caption_vecs.float().T
    i2t = recall_at_k(similarity, ks)
    t2i = recall_at_k(similarity.T, ks)
    return {
        **{f"image->caption R@{k}": v for k, v in i2t.items()},
        **{f"caption->image R@{k}": v for k, v in t2i.items()},
    }


def evaluate_pairs(
    student,
    tower,
    pairs: Sequence[tuple[str, str]],
    model: str = "student",
    heads: Sequence[str] | None = None,
    batch_size: int = 64,
) -> list[ResultRow]:
    """One row per head: recall of held-out ``(image path or PIL image, caption)`` pairs."""
    from jasper.vision import encode_images

    images = [p for p, _ in pairs]
    captions = [c for _, c in pairs]
    rows = []
    for head in heads or student.head_names:
        image_vecs = encode_images(student, tower, images, head, batch_size)
        caption_vecs = student.encode(captions, head=head, batch_size=batch_size, show_progress=False)
        metrics = pair_recall(image_vecs, caption_vecs)
        metrics["chance R@1"] = 1.0 / len(pairs)
        rows.append(ResultRow(model, head, student.head_dim(head), metrics))
    return rows


def write_before_after(
    before: Sequence[ResultRow],
    after: Sequence[ResultRow],
    out_dir: str | Path,
    stem: str = "image_retrieval",
) -> dict[str, Path]:
    """Stage 4's report: the same held-out pairs with the untrained tower and with the trained one."""
    rows = [ResultRow("untrained tower", r.head, r.dim, r.metrics) for r in before]
    rows += [ResultRow("stage 4", r.head, r.dim, r.metrics) for r in after]
    paths = write_report(rows, out_dir, stem=stem)
    log.info("held-out image<->caption recall:\n%s", markdown_table(rows))
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    from jasper.checkpoints import load_student_weights, read_student_state
    from jasper.data.images import ImageFolderPairs, SyntheticShapes, split_pairs, validate_pairs
    from jasper.student import Student
    from jasper.vision import load_vision

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--student", required=True, help="student.pt (stage 4 writes one next to vision.pt)")
    parser.add_argument("--vision", required=True, help="vision.pt")
    parser.add_argument("--folder", help="folder with index.jsonl/csv; default: the synthetic held-out split")
    parser.add_argument("--pairs", type=int, default=100, help="held-out pairs (candidates per query)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/image_retrieval")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    config, _ = read_student_state(args.student)
    if config is None:
        raise ValueError(f"{args.student} is not a student.pt (it has no config)")
    student = Student(**{k: v for k, v in config.items()})
    load_student_weights(student, args.student)
    tower = load_vision(args.vision)
    source = ImageFolderPairs(args.folder) if args.folder else SyntheticShapes(seed=args.seed)
    pairs, _ = validate_pairs(list(source))
    _, held = split_pairs(pairs, args.pairs, args.seed) if not args.folder else (None, pairs[: args.pairs])
    rows = evaluate_pairs(student, tower, held, model=Path(args.vision).parent.name or "student")
    paths = write_report(rows, args.out, stem="image_retrieval")
    print(markdown_table(rows))
    log.info("report written to %s", paths["markdown"])


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
