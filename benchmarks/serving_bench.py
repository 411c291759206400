"""Serving speed: sentences per second of each teacher, the student (every head) in PyTorch, and the student
exported to ONNX (float32 and dynamically quantised int8), on this machine's CPU, side by side in one run.

    python benchmarks/serving_bench.py --ckpt outputs/demo/stage3/student.pt            # the numbers
    python benchmarks/serving_bench.py --ckpt outputs/demo/stage3/student.pt --texts 8 --repeats 1   # a smoke run

The student is a ``student.pt`` of a run (its ``.hydra/config.yaml`` names the teachers, built as training built
them: :func:`jasper.evaluation.asymmetric.teacher_ensemble`); it is exported once into a temporary folder with
``onnx=true`` (:func:`jasper.exporting.export_student`: ``onnx/model.onnx`` and
``onnx/model_qint8_avx512_vnni.onnx``), run with the encoder in ONNX Runtime (:func:`jasper.evaluation.onnx_model.
load_onnx`, what ``SentenceTransformer(path, backend="onnx")`` does).

Texts: ``short``, the STS-B dev sentences (``--data``; ~10-15 tokens), and ``256-token``, passages cut to exactly
256 tokens of the student's tokenizer; every model truncates at 256 for both (the student's own max_length is
overridden so that it does the same work as the teachers). Batch sizes 1 and 32. Each cell encodes ``--texts``
texts; every model runs once per repeat, interleaved (teacher, student heads, ONNX, teacher, ...) so that load from
other processes falls on all of them; a cell is the median of ``--repeats`` runs, after one warm-up batch.
Threads: ``--threads`` for PyTorch (``torch.set_num_threads``) and ONNX Runtime (intra-op) alike.

The ratio column is the teachers' time over the row's: with several teachers, the time to encode with all of them
(what a document costs when the teachers encode it), so ``x 5.0`` reads "five times as many sentences per second".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import jasper.training.resolvers  # noqa: E402, F401  (the run's teachers config uses ${packaged_minilm:})
from jasper.evaluation.loaders import load_sts_tsv  # noqa: E402
from jasper.evaluation.onnx_model import ONNX_FILE, load_onnx  # noqa: E402
from jasper.evaluation.run_teachers import teacher_ensemble  # noqa: E402
from jasper.exporting import export_student  # noqa: E402
from jasper.exporting.onnx import int8_file  # noqa: E402
from jasper.storage.checkpoints import load_student  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LONG_TOKENS = 256
BATCHES = (1, 32)


def texts_for(data: Path, tokenizer, count: int) -> dict[str, list[str]]:
    """``short``: the first ``count`` distinct STS-B dev sentences; ``256-token``: those sentences run together and
    cut into passages of exactly 256 tokens (special tokens aside)."""
    pairs = load_sts_tsv(data / "stsb-dev.tsv")
    sentences = list(dict.fromkeys(s for a, b, _ in pairs for s in (a, b)))
    ids = tokenizer(" ".join(sentences), add_special_tokens=False, verbose=False)["input_ids"]  # cut below
    need = LONG_TOKENS * count
    if len(ids) < need:
        raise SystemExit(
            f"--texts {count}: the STS-B sentences give only {len(ids) // LONG_TOKENS} long passages"
        )
    long = [tokenizer.decode(ids[i : i + LONG_TOKENS]) for i in range(0, need, LONG_TOKENS)]
    return {"short": sentences[:count], f"{LONG_TOKENS}-token": long}


def timed(encode, texts: list[str], batch: int) -> float:
    """Sentences per second of ``encode`` over ``texts`` in batches of ``batch`` (one warm-up batch first)."""
    encode(texts[:batch])
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        encode(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - start)


def encoders(ckpt: Path, work: Path, threads: int) -> tuple[dict, list[str], object]:
    """Name -> ``encode(texts)`` for every teacher, every head of the student in PyTorch and the ONNX student
    (float32, int8); the teachers' names; the student's tokenizer."""
    student, train_config = load_student(ckpt, max_length=LONG_TOKENS)
    ensemble = teacher_ensemble(train_config, max_length=LONG_TOKENS)
    found = {}
    for teacher in ensemble.teachers:
        teacher.role = "document"
        found[f"teacher {teacher.name}"] = lambda t, teacher=teacher: teacher.encode(t, batch_size=len(t))
    for head in student.head_names:
        found[f"student {head} (PyTorch)"] = lambda t, head=head: student.encode(
            t, head=head, batch_size=len(t)
        )
    folder = export_student(student, work / "export", onnx=True)
    for label, file in (("ONNX fp32", ONNX_FILE), ("ONNX int8", int8_file("avx512_vnni"))):
        model = load_onnx(folder, file, threads)
        model.max_seq_length = LONG_TOKENS
        found[f"student fc1 ({label})"] = lambda t, model=model: model.encode(t, batch_size=len(t))
    return found, [f"teacher {t.name}" for t in ensemble.teachers], student.tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--ckpt", type=Path, required=True, help="a run's student.pt (its teachers from the run)"
    )
    parser.add_argument("--data", type=Path, default=REPO / "../shared/data/dev", help="holds stsb-dev.tsv")
    parser.add_argument("--texts", type=int, default=128, help="texts encoded per cell")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=None, help="also write the table as JSON here")
    args = parser.parse_args()
    if args.texts < max(BATCHES):
        print(
            f"note: --texts {args.texts} < {max(BATCHES)}: the b{max(BATCHES)} cells are one smaller batch (smoke run)"
        )
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work, torch.inference_mode():
        models, teachers, tokenizer = encoders(args.ckpt.resolve(), Path(work), args.threads)
        texts = texts_for(args.data.resolve(), tokenizer, args.texts)
        runs: dict[tuple[str, str, int], list[float]] = {}
        for _ in range(args.repeats):
            for kind, batch_texts in texts.items():
                for batch in BATCHES:
                    for name, encode in models.items():  # interleaved: load falls on every model alike
                        runs.setdefault((name, kind, batch), []).append(timed(encode, batch_texts, batch))
    cells = {key: statistics.median(values) for key, values in runs.items()}
    columns = [(kind, batch) for kind in texts for batch in BATCHES]

    def teachers_rate(kind: str, batch: int) -> float:  # all teachers in turn: 1 / sum of 1 / rate
        return 1 / sum(1 / cells[(t, kind, batch)] for t in teachers)

    header = ["model", *[f"{kind} b{batch} (x teachers)" for kind, batch in columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in models:
        row = [name]
        for kind, batch in columns:
            rate = cells[(name, kind, batch)]
            row.append(f"{rate:,.1f} (x {rate / teachers_rate(kind, batch):.2f})")
        lines.append("| " + " | ".join(row) + " |")
    print(
        f"Sentences per second, median of {args.repeats} interleaved runs of {args.texts} texts each, "
        f"{args.threads} thread(s), every model truncating at {LONG_TOKENS} tokens; (x teachers) = rate / the "
        f"teachers' rate ({', '.join(teachers)} in turn).\n"
    )
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"model": n, "texts": k, "batch": b, "sentences_per_s": v} for (n, k, b), v in cells.items()]
        args.out.write_text(
            json.dumps({"threads": args.threads, "repeats": args.repeats, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
