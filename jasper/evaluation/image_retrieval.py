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

from jasper.core.metrics import pair_recall
from jasper.core.tables import ResultRow, markdown_table, write_report
from jasper.data.image_sources import ImageFolderPairs
from jasper.data.images import split_pairs, validate_pairs
from jasper.data.shapes import SyntheticShapes
from jasper.models.vision import MultimodalStudent, load_vision
from jasper.storage.checkpoints import load_student

log = logging.getLogger(__name__)


def evaluate_pairs(
    model: MultimodalStudent,
    pairs: Sequence[tuple[str, str]],
    name: str = "student",
    heads: Sequence[str] | None = None,
    batch_size: int = 64,
) -> list[ResultRow]:
    """One row per head: recall of held-out ``(image path or PIL image, caption)`` pairs."""
    images = [p for p, _ in pairs]
    captions = [c for _, c in pairs]
    rows = []
    for head in heads or model.head_names:
        image_vecs = model.encode(images=images, head=head, batch_size=batch_size)
        caption_vecs = model.encode(captions, head=head, batch_size=batch_size, show_progress=False)
        metrics = pair_recall(image_vecs, caption_vecs)
        metrics["chance R@1"] = 1.0 / len(pairs)
        rows.append(ResultRow(name, head, model.head_dim(head), metrics))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
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

    student, _ = load_student(args.student)
    model = MultimodalStudent(student, load_vision(args.vision))
    source = ImageFolderPairs(args.folder) if args.folder else SyntheticShapes(seed=args.seed)
    pairs, _ = validate_pairs(list(source))
    _, held = split_pairs(pairs, args.pairs, args.seed) if not args.folder else (None, pairs[: args.pairs])
    rows = evaluate_pairs(model, held, name=Path(args.vision).parent.name or "student")
    paths = write_report(rows, args.out, stem="image_retrieval")
    print(markdown_table(rows))
    log.info("report written to %s", paths["markdown"])


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
