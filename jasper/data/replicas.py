"""Hub replicas of the paper's datasets: tiny stand-ins written into a Hugging Face cache under the exact ids and in
the file layouts of the real repositories, so ``experiment=jasper_paper`` reads them through its own sources,
offline, unchanged (with the teachers' and the tower's replicas, :mod:`jasper.models.replicas`):

    python -m jasper.data.replicas /tmp/hub     # every replica; prints the environment to run jasper on them

- ``HuggingFaceFW/fineweb-edu``: the README's ``configs`` (``default``: ``data/*/*``; ``sample-10BT``:
  ``sample/10BT/*``) and, as ``hf download --include "sample/10BT/*"`` leaves it, parquet shards
  ``sample/10BT/000_00000.parquet`` and ``001_00000.parquet`` with the card's eleven columns (``text``, ``id``,
  ``dump``, ``url``, ``date``, ``file_path``, ``language``, ``language_score``, ``token_count``, ``score``,
  ``int_score``).
- ``sentence-transformers/embedding-training-data``: ``<name>.jsonl.gz`` files at the repository's root, one per
  row format its README lists (pairs, triplets, ``{"set"}``, ``{"query", "pos"}``, ``{"query", "pos", "neg"}``).
- ``BAAI/Infinity-MM``: the README's ``stage1`` config (``stage1/*/*``) over webdataset tar shards: each sample a
  ``<key>.jpg`` and a ``<key>.json`` holding the card's record (``id``, ``source``, ``conversations``, ``image``
  (the original path, a string), ...).

Texts are docstrings of the standard library (real English, the same on every machine with the same Python), images
small solid-colour JPEGs; a row's values are made up in the real schema, never copied from the real data. Sources:
the repositories' READMEs, https://huggingface.co/datasets/<id>/blob/main/README.md (fineweb-edu's ``configs`` and
features; Infinity-MM's ``configs``, its "webdataset" format and the card's example record; embedding-training-
data's "Data Format" section and file table). Shard and subfolder names follow those patterns; the real
repositories' file listings were not read (Infinity-MM is gated).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from jasper.data.sources import PythonDocstrings
from jasper.models.replicas import (
    SIGLIP_REPO,
    build_teacher_replicas,
    build_tower_replica,
    replica_env,
    write_snapshot,
)

FINEWEB_EDU = "HuggingFaceFW/fineweb-edu"
EMBEDDING_DATA = "sentence-transformers/embedding-training-data"
INFINITY_MM = "BAAI/Infinity-MM"
INFINITY_MM_SUBSET = "jasper_replica"  # stage1/<subset>/: the real subfolder names are not known here
STDLIB_PACKAGES = ("email", "logging", "json", "http", "urllib", "unittest")  # where the texts come from


def dataset_commit(repo_id: str) -> str:
    """A fixed commit for a dataset replica (the configs name no dataset revision, so ``refs/main`` decides)."""
    return hashlib.sha1(f"jasper replica of {repo_id}".encode()).hexdigest()  # noqa: S324 (a name, not security)


def stdlib_texts(count: int) -> list[str]:
    """``count`` docstrings of at least 200 characters (whole paragraphs of prose), in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    for package in STDLIB_PACKAGES:
        texts += [t for t in PythonDocstrings(min_chars=200, root=str(stdlib / package)) if t not in texts]
        if len(texts) >= count:
            return texts[:count]
    raise ValueError(f"only {len(texts)} docstrings of 200+ characters in {STDLIB_PACKAGES}; ask for fewer")


def _readme(folder: Path, configs: list[dict], body: str) -> None:
    """A dataset card whose YAML header holds ``configs`` as the hub's README does (JSON is valid YAML)."""
    header = "\n".join(f"  - {json.dumps(c)}" for c in configs)
    (folder / "README.md").write_text(f"---\nconfigs:\n{header}\n---\n{body}\n")


def write_fineweb_edu(folder: Path, rows_per_shard: int = 24, shards: int = 2) -> None:
    import pyarrow as pa  # heavy; only the replicas' parquet needs it
    import pyarrow.parquet as pq

    texts = stdlib_texts(rows_per_shard * shards)
    _readme(
        folder,
        [
            {"config_name": "default", "data_files": [{"split": "train", "path": "data/*/*"}]},
            {"config_name": "sample-10BT", "data_files": [{"split": "train", "path": "sample/10BT/*"}]},
        ],
        "# FineWeb-Edu (jasper's replica: standard-library docstrings in the real columns)",
    )
    for shard in range(shards):
        part = texts[shard * rows_per_shard : (shard + 1) * rows_per_shard]
        table = pa.table(
            {
                "text": part,
                "id": [f"<urn:uuid:{dataset_commit(t)[:32]}>" for t in part],
                "dump": ["CC-MAIN-2024-10"] * len(part),
                "url": [f"https://example.org/{shard}/{i}" for i in range(len(part))],
                "date": ["2024-02-21T00:00:00Z"] * len(part),
                "file_path": ["s3://commoncrawl/crawl-data/CC-MAIN-2024-10/replica.warc.gz"] * len(part),
                "language": ["en"] * len(part),
                "language_score": pa.array([0.95] * len(part), pa.float64()),
                "token_count": pa.array([len(t.split()) for t in part], pa.int64()),
                "score": pa.array([3.2] * len(part), pa.float64()),
                "int_score": pa.array([3] * len(part), pa.int64()),
            }
        )
        path = folder / "sample" / "10BT" / f"{shard:03d}_00000.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)


# One file per row format of the repository's README, named after a file of that format there.
EMBEDDING_FILES: dict[str, Callable[[list[str]], object]] = {
    "gooaq_pairs.jsonl.gz": lambda t: t[:2],  # ["text1", "text2"]
    "AllNLI.jsonl.gz": lambda t: t[:3],  # ["anchor", "positive", "negative"]
    "WikiAnswers.jsonl.gz": lambda t: {"set": t[:3]},
    "searchQA_top5_snippets.jsonl.gz": lambda t: {"query": t[0], "pos": t[1:3]},
    "quora_duplicates_triplets.jsonl.gz": lambda t: {"query": t[0], "pos": [t[1]], "neg": [t[2]]},
}


def write_embedding_data(folder: Path, rows_per_file: int = 4) -> None:
    texts = stdlib_texts(3 * rows_per_file * len(EMBEDDING_FILES) + 64)[64:]  # not fineweb-edu's first texts
    (folder / "README.md").write_text("# Training Data for Text Embedding Models (jasper's replica)\n")
    for index, (name, row) in enumerate(EMBEDDING_FILES.items()):
        lines = []
        for r in range(rows_per_file):
            start = 3 * (index * rows_per_file + r)
            lines.append(json.dumps(row(texts[start : start + 3])) + "\n")
        with gzip.open(folder / name, "wt", encoding="utf-8") as file:
            file.writelines(lines)


def write_infinity_mm(folder: Path, pairs: int = 24) -> None:
    captions = [t.split("\n\n")[0] for t in stdlib_texts(pairs)]
    _readme(
        folder,
        [
            {"config_name": f"stage{k}", "data_files": [{"split": "train", "path": p}]}
            for k, p in STAGES.items()
        ],
        "# Infinity-MM (jasper's replica: solid-colour images, standard-library docstrings as captions)",
    )
    shard = folder / "stage1" / INFINITY_MM_SUBSET / "000000.tar"
    shard.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(shard, "w") as tar:
        for i, caption in enumerate(captions):
            image = io.BytesIO()
            Image.new("RGB", (48, 40), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(image, "JPEG")
            record = {
                "id": str(i),
                "source": "replica",
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image briefly."},
                    {"from": "gpt", "value": caption},
                ],
                "image": f"/path/of/the/image/{i:06d}.jpg",
            }
            for suffix, data in (("jpg", image.getvalue()), ("json", json.dumps(record).encode())):
                member = tarfile.TarInfo(f"{i:06d}.{suffix}")
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))


STAGES = {1: "stage1/*/*", 2: "stage2/*/*/*", 3: "stage3/*/*", 4: "stage4/*/*/*"}  # the README's configs
DATASETS = {
    FINEWEB_EDU: write_fineweb_edu,
    EMBEDDING_DATA: write_embedding_data,
    INFINITY_MM: write_infinity_mm,
}


def build_dataset_replicas(cache_dir: str | Path) -> dict[str, Path]:
    """Write the three datasets' replicas into the Hugging Face cache ``cache_dir``; ``{hub id: snapshot}``."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    snapshots = {}
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".staging-") as staging:
        for repo_id, write in DATASETS.items():
            folder = Path(staging) / repo_id.replace("/", "--")
            folder.mkdir()
            write(folder)
            snapshots[repo_id] = write_snapshot(
                cache_dir, repo_id, folder, dataset_commit(repo_id), "dataset"
            )
    return snapshots


def build_paper_replicas(cache_dir: str | Path) -> dict[str, Path]:
    """Everything ``experiment=jasper_paper`` reads from the hub: teachers (the student is stella's replica too),
    the SigLIP tower and the three datasets."""
    return {
        **build_teacher_replicas(cache_dir),
        SIGLIP_REPO: build_tower_replica(cache_dir),
        **build_dataset_replicas(cache_dir),
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(
            "usage: python -m jasper.data.replicas CACHE_DIR   (an empty folder: the replicas' HF_HUB_CACHE)"
        )
    for name, snapshot in build_paper_replicas(sys.argv[1]).items():
        print(f"{name}: {snapshot}")
    print("run jasper on them with:", " ".join(f"{k}={v}" for k, v in replica_env(sys.argv[1]).items()))
