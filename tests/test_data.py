import json
import random

import pytest
import torch

from jasper.data.augment import add_edits, augment, chunk_sentences, edit_words, split_sentences
from jasper.data.datamodule import TextDistillDataModule, clean_rows, split_held_out
from jasper.data.files import LocalFiles, RejectedRow
from jasper.data.sources import TextFiles
from jasper.models.ensemble import TeacherEnsemble
from jasper.models.teachers import HuggingFaceTeacher

TEXT = "One sentence here. Two is next! Is three a question? Four ends it. Five. Six. Seven. Eight. Nine. Ten. Eleven."


def test_clean_rows_counts_every_rejection():
    texts, rejected = clean_rows(["a", "", "  ", None, 3, {"text": "x"}, " a ", "b"])
    assert texts == ["a", "b"]
    assert rejected == {"empty": 2, "non-text": 3, "duplicate": 1}


def test_chunks_keep_every_sentence_in_order():
    rng = random.Random(0)
    for _ in range(20):
        chunks = chunk_sentences(TEXT, rng, 1, 10)
        assert " ".join(chunks) == " ".join(split_sentences(TEXT))
        assert all(1 <= len(split_sentences(c)) <= 10 for c in chunks)


def test_augment_is_seeded_and_shares_are_close_to_config():
    texts = [f"Text {i} starts here. " + "Then one more sentence. " * 11 for i in range(4000)]
    once, again = augment(texts, seed=3), augment(texts, seed=3)
    assert once == again
    assert augment(texts, seed=4) != once
    untouched = augment(texts, chunk_share=0.0, shuffle_share=0.0)
    assert untouched == texts
    chunked = augment(texts, chunk_share=0.3, shuffle_share=0.0, seed=1)
    # A chunked 12-sentence text (chunks of at most 10) never stays whole: 70% remain whole, +- sampling noise.
    whole = sum(1 for t in chunked if t.count(".") == 12)
    assert 0.66 < whole / len(texts) < 0.74
    shuffled = augment(texts, chunk_share=0.0, shuffle_share=0.5, seed=1)
    changed = sum(
        a != b for a, b in zip(shuffled, texts, strict=True)
    )  # 12 words: a shuffle ~always moves one
    assert 0.45 < changed / len(texts) < 0.55


def test_augment_rejects_bad_shares():
    with pytest.raises(ValueError, match="chunk_share"):
        augment(["a"], chunk_share=1.5)
    with pytest.raises(ValueError, match="edit_share"):
        augment(["a"], edit_share=-0.1)


def one_edit_apart(original: list[str], edited: list[str]) -> str:
    """Which single edit turns ``original`` into ``edited`` (the reference: word lists compared directly)."""
    if len(edited) == len(original) - 1 and any(
        original[:i] + original[i + 1 :] == edited for i in range(len(original))
    ):
        return "delete"
    if len(edited) == len(original) + 1 and "not" in edited:
        i = edited.index("not")
        if edited[:i] + edited[i + 1 :] == original:
            return "negate"
    if len(edited) == len(original):
        differ = [i for i, (a, b) in enumerate(zip(original, edited, strict=True)) if a != b]
        if len(differ) == 2 and differ[1] == differ[0] + 1 and sorted(original) == sorted(edited):
            return "swap"
        if len(differ) <= 1:
            return "substitute"
    raise AssertionError(f"{edited} is not one edit from {original}")


def test_every_edit_is_one_word_away_and_all_kinds_occur():
    rng = random.Random(0)
    vocabulary = ["guitar", "dog", "woman"]
    kinds = set()
    for i in range(400):
        text = " ".join(f"w{j}" for j in range(1 + i % 7))
        kind = one_edit_apart(text.split(), edit_words(text, rng, vocabulary).split())
        kinds.add(kind)
    assert kinds == {"delete", "swap", "substitute", "negate"}


def test_negation_follows_the_auxiliary():
    for seed in range(50):
        edited = edit_words("A man is playing a guitar", random.Random(seed), ["x"])
        if "not" in edited.split():
            assert edited == "A man is not playing a guitar"


def test_edits_follow_their_text_at_the_configured_share_and_leave_the_rest_alone():
    texts = [f"sentence number {i} is about a dog" for i in range(3000)]
    out = add_edits(texts, 0.25, seed=1)
    assert out == add_edits(texts, 0.25, seed=1)
    assert len(set(out)) == len(out), "an edit that equals another text is not added twice"
    # Every original in order; each added text sits right after its original and is one edit from it.
    originals = [t for t in out if t in set(texts)]
    assert originals == texts
    added = [(out[i - 1], t) for i, t in enumerate(out) if t not in set(texts)]
    for original, edited in added:
        one_edit_apart(original.split(), edited.split())
    assert 0.21 < len(added) / len(texts) < 0.29
    assert add_edits(texts, 0.0, seed=1) == texts
    # Edits come after chunking and shuffling, which they leave as they were.
    base = augment(texts, seed=2)
    assert [t for t in augment(texts, seed=2, edit_share=0.5) if t in set(base)] == base


def test_held_out_split_depends_on_text_not_position():
    texts = [f"text number {i}" for i in range(100)]
    train, held = split_held_out(texts, 10)
    _, held_reversed = split_held_out(texts[::-1], 10)
    assert len(held) == 10 and set(held) == set(held_reversed) and not set(held) & set(train)
    with pytest.raises(ValueError, match="val_texts"):
        split_held_out(texts, 100)


def test_text_files_read_jsonl_and_report_missing_files(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"body": "hello"}) + "\n" + json.dumps({"body": None}) + "\n")
    assert list(TextFiles([str(path)], text_field="body")) == [
        "hello",
        None,
    ]  # None is rejected later, counted
    with pytest.raises(KeyError, match="text_field"):
        list(TextFiles([str(path)]))
    with pytest.raises(FileNotFoundError, match="data.source.paths"):
        TextFiles([str(tmp_path / "missing.jsonl")])


def test_every_row_carries_its_own_teacher_vector(tiny_bert, docstrings, tmp_path, caplog):
    teacher = HuggingFaceTeacher(tiny_bert, max_length=64)
    ensemble = TeacherEnsemble([teacher], batch_size=16)
    rows = docstrings[:60] + ["", None, 7]

    def data_module() -> TextDistillDataModule:
        augment = {"chunk_share": 0.5, "shuffle_share": 0.1}
        return TextDistillDataModule(
            rows,
            ensemble,
            tokenize=lambda t: {},
            batch_size=8,
            val_texts=10,
            augment=augment,
            seed=1,
            cache_dir=str(tmp_path),
        )

    module = data_module()
    with caplog.at_level("WARNING"):
        module.setup("fit")
    assert "rejected 3 row(s)" in caplog.text
    train, val = module.train_set, module.val_set
    assert len(val) == 10 and len(train) >= 50
    picked = random.Random(0).sample(range(len(train)), 12)
    direct = teacher.encode([train.texts[i] for i in picked])
    # Cached as float16 on disk (jasper/storage/cache.py): equal to the direct encode within fp16 rounding.
    assert torch.allclose(torch.stack([train[i][1] for i in picked]), direct, atol=2e-3)
    assert torch.allclose(val.teacher_vectors, teacher.encode(val.texts), atol=2e-3)
    assert set(val.texts).isdisjoint(train.texts)
    # A second module with the same texts and teachers reads the cached vectors.
    again = data_module()
    with caplog.at_level("INFO"):
        again.setup("fit")
    assert "read from" in caplog.text
    assert torch.equal(again.train_set.teacher_vectors.tensor(), train.teacher_vectors.tensor())


def test_a_source_with_nothing_usable_fails(tiny_bert):
    ensemble = TeacherEnsemble([HuggingFaceTeacher(tiny_bert)])
    module = TextDistillDataModule(["", None], ensemble, tokenize=lambda t: {}, val_texts=1)
    with pytest.raises(ValueError, match="no usable text"):
        module.setup("fit")


def test_length_buckets_cover_every_row_once_in_similar_length_batches():
    from torch.utils.data import RandomSampler

    from jasper.data.batching import LengthBucketBatchSampler

    lengths = [random.Random(i).randint(1, 500) for i in range(1000)]
    sampler = LengthBucketBatchSampler(
        RandomSampler(range(1000), generator=torch.Generator().manual_seed(0)),
        10,
        True,
        lengths,
        window_batches=20,
    )
    first, second = list(sampler), list(sampler)
    for epoch in (first, second):
        assert sorted(i for batch in epoch for i in batch) == list(range(1000))
        assert all(len(batch) == 10 for batch in epoch)
    assert first != second  # a new order every epoch
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first) / len(first)
    assert spread < 50  # random batches of 10 from 1..500 spread ~400


def test_messy_jsonl_rows_are_rejected_and_counted_with_file_and_line(tmp_path, caplog):
    path = tmp_path / "messy.jsonl"
    lines = [
        json.dumps({"text": "a good row"}),
        json.dumps({"text": 123}),  # a number as text
        '{"text": "broken',  # one broken JSON line
        "",
        json.dumps({"body": "no text field"}),
        json.dumps({"text": "another good row"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    rows = list(LocalFiles([str(path)]))
    assert rows == [
        "a good row",
        RejectedRow("non-text", f"{path}:2"),
        RejectedRow("broken JSON", f"{path}:3"),
        RejectedRow("no 'text'", f"{path}:5"),
        "another good row",
    ]
    places: dict = {}
    texts, rejected = clean_rows(rows, places=places)
    assert texts == ["a good row", "another good row"]
    assert rejected == {"non-text": 1, "broken JSON": 1, "no 'text'": 1}
    assert places["broken JSON"] == [f"{path}:3"]
    module = TextDistillDataModule(LocalFiles([str(path)]), None, tokenize=None, val_texts=1)
    with caplog.at_level("WARNING"):
        train, held_out = module.prepare_texts()
    assert len(train) + len(held_out) == 2
    assert f"broken JSON at {path}:3" in caplog.text and f"non-text at {path}:2" in caplog.text


def test_a_file_that_is_not_jsonl_fails_at_once_naming_it(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text("just some words\nand more words\n")
    with pytest.raises(ValueError, match=f"{path} is not JSONL"):
        LocalFiles([str(path)])
    path.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(KeyError, match="text_field"):
        LocalFiles([str(path)])


def test_rows_that_are_not_utf8_are_rejected_and_counted_never_replaced(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps({"text": "caf\u00e9 au lait"}).encode()
    bad = json.dumps({"text": "caf\u00e9 noir"}, ensure_ascii=False).encode("latin-1")  # \xe9: not UTF-8
    path.write_bytes(bad + b"\n" + good + b"\n" + bad + b"\n")
    rows = list(LocalFiles([str(path)]))  # a first line that is not UTF-8 does not make the file "not JSONL"
    assert rows == [
        RejectedRow("invalid UTF-8", f"{path}:1"),
        "caf\u00e9 au lait",
        RejectedRow("invalid UTF-8", f"{path}:3"),
    ]
    texts, rejected = clean_rows(rows)
    assert texts == ["caf\u00e9 au lait"] and rejected == {"invalid UTF-8": 2}
    assert not any("\ufffd" in t for t in texts)
