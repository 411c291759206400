"""Image <-> caption retrieval on held-out pairs: recall@1/5/10 both ways, reported like the text evaluation.

Pair ``i`` is image ``i`` with caption ``i``; a query is right at ``k`` when its own pair is among the ``k``
nearest candidates (cosine). With N held-out pairs, chance recall@1 is 1/N.

    python evaluate.py eval=images model=outputs/default/stage4/student.pt   # conf/evaluate/eval/images.yaml

:func:`evaluate_images` is what that command runs: the student with the tower beside it (``eval.images.vision``
for another) on the synthetic shapes' held-out split (as stage 4 holds it out) or on a folder of pairs
(``eval.images.folder``), written to ``out_dir`` like the text evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from jasper.core.metrics import pair_recall
from jasper.core.tables import ResultRow, markdown_table, write_report
from jasper.data.image_pairs import split_pairs, validate_pairs
from jasper.data.image_sources import ImageFolderPairs
from jasper.data.shapes import SyntheticShapes
from jasper.evaluation.runner import default_out_dir
from jasper.evaluation.sets import resolve
from jasper.models.vision import VISION_FILE, MultimodalStudent, load_vision
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


def held_out_pairs(spec: Mapping, repo: Path) -> tuple[list[tuple[str, str]], str]:
    """``eval.images``'s pairs and a line saying which: the first ``pairs`` of a ``folder``, or the synthetic
    shapes' held-out split (seeded as stage 4 splits them, so the same ``seed`` and ``synthetic`` settings give the
    pairs training held out)."""
    count, seed = int(spec["pairs"]), int(spec.get("seed", 0))
    if spec.get("folder"):
        folder = resolve(spec["folder"], repo)
        pairs, _ = validate_pairs(list(ImageFolderPairs(str(folder))))
        return pairs[:count], f"the first {min(count, len(pairs))} pairs of {folder}"
    synthetic = dict(spec.get("synthetic") or {})
    synthetic["cache_dir"] = str(resolve(synthetic.get("cache_dir") or "outputs/cache", repo))
    pairs, _ = validate_pairs(list(SyntheticShapes(seed=seed, **synthetic)))
    _, held = split_pairs(pairs, count, seed)
    return held, f"{len(held)} held-out pairs of {len(pairs)} synthetic shapes (seed {seed})"


def evaluate_images(cfg: Mapping, repo: str | Path) -> tuple[list[ResultRow], str]:
    """``python evaluate.py eval=images model=PATH``: recall of a stage-4 ``student.pt`` and its tower on
    ``eval.images``'s pairs, every head; JSON + markdown + PNG to ``out_dir``. Returns the rows and the markdown."""
    repo = Path(repo)
    ecfg, spec = cfg["eval"], cfg["eval"]["images"]
    if not cfg.get("model") or cfg.get("models") or cfg.get("run_name"):
        raise ValueError(
            "eval=images evaluates one stage-4 student: give model=PATH/student.pt (its vision.pt beside it, or "
            "eval.images.vision=PATH), and neither models= nor run_name="
        )
    student_path = resolve(str(cfg["model"]), repo)
    vision_path = resolve(spec["vision"], repo) if spec.get("vision") else student_path.parent / VISION_FILE
    student, _ = load_student(student_path)
    model = MultimodalStudent(student, load_vision(vision_path))
    pairs, described = held_out_pairs(spec, repo)
    name = student_path.parent.name or "student"
    rows = evaluate_pairs(model, pairs, name=name, batch_size=int(cfg.get("batch_size", 64)))
    out_dir = resolve(default_out_dir(cfg), repo)
    paths = write_report(rows, out_dir, stem=str(ecfg.get("stem") or "image_retrieval"))
    caption = (
        f"**{ecfg.get('title') or 'Image <-> caption retrieval'}**: {student_path} with the tower {vision_path}, "
        f"on {described}; chance R@1 = 1/{len(pairs)}."
    )
    markdown = f"{caption}\n\n{markdown_table(rows)}"
    paths["markdown"].write_text(markdown, encoding="utf-8")
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return rows, markdown
