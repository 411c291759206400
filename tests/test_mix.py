"""The paper's 80/20 mix from local files in the hub schemas, cleaned and counted, vectors aligned to texts."""

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import jasper.training.resolvers  # noqa: F401  (resolvers)
from jasper.data.datamodule import clean_rows
from jasper.data.files import RejectedRow
from jasper.data.mix import JsonRows, Mix, TextsOf, quotas

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture
def files(tmp_path):
    """fineweb-edu-like parquet (``text`` + metadata) and embedding-training-data-like jsonl.gz rows."""
    web = [
        f"Web page {i}. It explains topic {i % 97} in a few sentences. Read more on page {i + 1}."
        for i in range(900)
    ]
    table = pa.table({"text": web, "id": [f"<urn:{i}>" for i in range(900)], "score": [3.1] * 900})
    pq.write_table(table, tmp_path / "fineweb.parquet")
    rows = []
    for i in range(150):  # the three row shapes of embedding-training-data
        if i % 3 == 0:
            rows.append([f"question {i}?", f"answer {i}."])
        elif i % 3 == 1:
            rows.append({"query": f"query {i}", "pos": [f"relevant {i}"], "neg": [f"irrelevant {i}", ""]})
        else:
            rows.append({"set": [f"paraphrase {i} a", f"paraphrase {i} b", f"question {i - 2}?"]})
    with gzip.open(tmp_path / "pairs.jsonl.gz", "wt") as file:
        file.writelines(json.dumps(r) + "\n" for r in rows)
    return tmp_path / "fineweb.parquet", tmp_path / "pairs.jsonl.gz"


def test_quotas_sum_to_the_total():
    assert quotas({"a": 0.8, "b": 0.2}, 1001) == {"a": 801, "b": 200}
    assert sum(quotas({"a": 1, "b": 1, "c": 1}, 100).values()) == 100
    with pytest.raises(ValueError, match="weights"):
        quotas({"a": 0.0}, 10)


def test_structured_rows_yield_their_texts_only(files):
    _, pairs = files
    texts = list(TextsOf(JsonRows([str(pairs)])))
    assert texts[:5] == ["question 0?", "answer 0.", "query 1", "relevant 1", "irrelevant 1"]
    assert texts.count("") == 50  # kept raw: the DataModule rejects and counts it


def test_mix_keeps_its_shares_interleaved(files):
    web, pairs = files
    mix = Mix(
        {"web": TextsOf(JsonRows([str(web)]), fields=["text"]), "pairs": TextsOf(JsonRows([str(pairs)]))},
        {"web": 0.8, "pairs": 0.2},
        total=500,
        seed=1,
    )
    rows = list(mix)
    assert mix.counts == Counter({"web": 400, "pairs": 100}) and len(rows) == 500
    first_half = sum(r.startswith("Web page") for r in rows[:250])
    assert abs(first_half - 200) < 25  # interleaved, not 400 web rows then 100 pairs
    assert rows == list(mix)  # same seed, same order
    with pytest.raises(ValueError, match="same sources"):
        Mix({"web": []}, {"web": 0.5, "pairs": 0.5}, total=10)


def test_a_short_source_is_reported_not_stretched(files, caplog):
    web, pairs = files
    mix = Mix(
        {"web": TextsOf(JsonRows([str(web)]), fields=["text"]), "few": ["a", "b"]},
        {"web": 0.5, "few": 0.5},
        100,
    )
    assert len(list(mix)) == 52 and "ran out 48 row(s) short" in caplog.text


def test_paper_mix_local_config_end_to_end(files, tiny_bert, tmp_path, caplog):
    """Mixed 80/20, rejected rows counted, augmented, encoded once; every row's vector is its text's vector."""
    web, pairs = files
    teacher = f"{{_target_:jasper.models.teachers.HuggingFaceTeacher,model_name_or_path:'{tiny_bert}',name:tiny,max_length:32}}"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "data=paper_mix_local",
                f"data.source.sources.fineweb_edu.rows.paths=[{web}]",
                f"data.source.sources.embedding_data.rows.paths=[{pairs}]",
                "data.source.total=250",
                "data.val_texts=10",
                "data.augment.chunk_share=0.5",
                "data.augment.shuffle_share=0.2",
                f"teachers.teachers=[{teacher}]",
                f"paths.cache_dir={tmp_path}",
                "paths.output_dir=/nonexistent/stage1",
                "stages.stage1.batch_size=8",
            ],
        )
    teachers = instantiate(cfg.teachers)
    data = instantiate(cfg.data, teachers=teachers, tokenize=lambda texts: {"n": torch.tensor([len(texts)])})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data.setup("fit")
    finally:
        torch.set_num_threads(threads)
    assert data.source.counts == Counter({"fineweb_edu": 200, "embedding_data": 50})
    # 50 embedding rows hold ~117 texts, some empty or repeated: counted, not trained on.
    raw = list(TextsOf(JsonRows([str(pairs)])))
    assert data.rejected["empty"] > 0 and data.rejected["duplicate"] > 0
    corpus = json.loads(next(tmp_path.glob("corpus-*/corpus.json")).read_text())
    assert corpus["rejected"] == dict(data.rejected)
    web_share = np.mean([t.startswith("Web page") or "page" in t.split() for t in data.train_set.texts])
    assert 0.3 < web_share < 0.9 and len(raw) > 50
    # Alignment after augmentation and the DataLoader's shuffle: each row's vector is its own text's.
    loader = torch.utils.data.DataLoader(
        data.train_set,
        batch_size=8,
        shuffle=True,
        collate_fn=lambda rows: rows,
        generator=torch.Generator().manual_seed(0),
    )
    rows = next(iter(loader)) + next(iter(loader))
    direct = teachers.encode([text for text, _ in rows], show_progress=False)
    assert torch.allclose(torch.stack([vector for _, vector in rows]), direct, atol=2e-3)


def test_clean_rows_counts_each_reason():
    texts, counts = clean_rows(["a", " a ", "", None, 3, "x" * 50, "b"], max_chars=10)
    assert texts == ["a", "x" * 10, "b"]
    assert counts == Counter({"duplicate": 1, "empty": 1, "non-text": 2, "truncated": 1})


def test_json_rows_reject_invalid_utf8_and_name_the_line_of_broken_json(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    lines = [b'["question?", "answer."]', b'["caf\xe9"]', b"", b'{"set": ["a", "b"]}']
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    rows = list(JsonRows([str(path)]))
    assert rows == [["question?", "answer."], RejectedRow("invalid UTF-8", f"{path}:2"), {"set": ["a", "b"]}]
    texts, rejected = clean_rows(TextsOf(JsonRows([str(path)])))
    assert texts == ["question?", "answer.", "a", "b"] and rejected == {"invalid UTF-8": 1}
    broken = tmp_path / "broken.jsonl"
    broken.write_text('["fine"]\n\n{"text": "cut off\n')
    with pytest.raises(ValueError, match=rf"{broken}:3 is not a JSON row .*fix or delete that line"):
        list(JsonRows([str(broken)]))
