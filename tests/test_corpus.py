import itertools
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jasper.data.corpus import _CODE, EnglishProse, filter_texts, gcide_texts, normalise, reject_reason
from jasper.data.datamodule import TextDistillDataModule
from jasper.models.ensemble import TeacherEnsemble
from jasper.models.teachers import HuggingFaceTeacher

PROSE = "The small and nearly cubical stone building toward which all must pray."


@pytest.mark.parametrize(
    "line",
    [
        ">>> model.encode(texts)",
        "x = torch.zeros(3) is the tensor here",
        "Call get_embedding_dimension to read the size of vectors",
        "Returns the value of self.fooBar when it is not None.",
        "See https://example.org/docs for every detail of this.",
        "Use the :class:`Student` with care in every case.",
        "The dict {'a': 1} holds one key and one value.",
        "Reads files from data/train/texts and returns them all.",
    ],
)
def test_code_like_lines_are_dropped_as_code(line):
    assert reject_reason(normalise(line), 5, 120) == "code"


@pytest.mark.parametrize(
    "line, rule",
    [
        ("- a bullet point of a list that is long", "markup"),
        ("Args: the texts to encode into vectors now", "markup"),
        ("42 17 99 3.5 1e-3 0x1f 7 8 9", "not_prose"),
        ("Too short here.", "too_short"),
        (" ".join(["word"] * 121) + ".", "too_long"),
        (PROSE, None),
        ('"To be, or not to be," said the prince to all.', None),
    ],
)
def test_rules_on_hand_made_rows(line, rule):
    assert reject_reason(normalise(line), 5, 120) == rule


def test_length_bounds_are_inclusive():
    five, twelve = "one two three four five", "one two three four five six seven eight nine ten a b"
    assert reject_reason(five, 5, 12) is None and reject_reason(twelve, 5, 12) is None
    assert reject_reason(five, 6, 12) == "too_short" and reject_reason(twelve, 5, 11) == "too_long"


def test_filter_counts_every_rule_and_drops_duplicates_case_insensitively():
    rows = [
        PROSE,
        PROSE.upper().replace("THE", "The", 1),
        "  " + PROSE + " [1913 Webster]",
        "",
        None,
        "a b",
        "f(x) = y and so on",
    ]
    kept, counts = filter_texts(rows, 5, 120)
    assert kept == [PROSE]
    assert counts == {"kept": 1, "duplicate": 2, "empty": 2, "too_short": 1, "code": 1}


def test_editorial_tags_and_line_breaks_are_normalised():
    assert normalise("A needle\n for sewing up   wounds. [1913 Webster]") == "A needle for sewing up wounds."


def test_the_installed_gcide_yields_definitions_and_quotations():
    rows = list(itertools.islice(gcide_texts(), 3000))  # the first file only: a second, not the whole build
    kept, counts = filter_texts(rows, 5, 120)
    assert len(rows) == 3000 and counts["kept"] > 2000
    assert any("Abandon" in t or "abandon" in t for t in kept)


def fake_gcide(folder, count):
    """A folder of GCIDE files in the package's format: ``count`` definitions, each with one quotation."""
    entries = {
        f"word{i}": {
            "pos": [
                {
                    "definitions": [
                        {
                            "text": f"A thing of kind number {i} that people use every day.",
                            "examples": [f"They said that kind {i} was the best of all of them."],
                        },
                        {"text": "code_like(x)", "examples": []},
                    ]
                }
            ]
        }
        for i in range(count)
    }
    folder.mkdir()
    (folder / "words_A.json").write_text(json.dumps(entries))
    return str(folder)


def test_corpus_builds_once_with_counts_and_feeds_the_datamodule(tmp_path, tiny_bert, caplog):
    gcide = fake_gcide(tmp_path / "gcide", 2000)
    corpus = EnglishProse(str(tmp_path), sources=["gcide"], max_per_source={"gcide": 3000}, gcide_dir=gcide)
    stats = corpus.build()
    assert stats["texts"] == 3000 and stats["sources"]["gcide"] == {
        "kept": 3000,
        "over_cap": 1000,
        "code": 2000,
    }
    texts = list(corpus)
    assert len(texts) == len(set(texts)) == 3000
    assert all(5 <= len(t.split()) <= 120 and "\n" not in t for t in texts)
    written = corpus.path.stat().st_mtime_ns
    again = EnglishProse(str(tmp_path), sources=["gcide"], max_per_source={"gcide": 3000}, gcide_dir=gcide)
    assert list(again) == texts
    assert corpus.path.stat().st_mtime_ns == written  # read back, not rebuilt
    assert json.loads((corpus.folder / "stats.json").read_text())["inputs"]["gcide"]
    ensemble = TeacherEnsemble([HuggingFaceTeacher(tiny_bert)], online=True)
    module = TextDistillDataModule(
        corpus,
        ensemble,
        tokenize=None,
        max_texts=5000,
        val_texts=10,
        augment={"chunk_share": 0.0, "shuffle_share": 0.0},
    )
    with caplog.at_level("WARNING"):
        train, held_out = module.prepare_texts()
    assert len(train) == 2990 and len(held_out) == 10
    assert "data.max_texts=5000 but EnglishProse has only 2990" in caplog.text


def test_bad_settings_fail_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="data.source.sources"):
        EnglishProse(str(tmp_path), sources=["wikipedia"])
    with pytest.raises(ValueError, match="min_words"):
        EnglishProse(str(tmp_path), min_words=10, max_words=5)


def test_a_source_with_nothing_usable_fails_naming_it(tmp_path):
    folder = tmp_path / "gcide"
    folder.mkdir()
    (folder / "words_A.json").write_text(json.dumps({"x": {"pos": [{"definitions": [{"text": "f(x)"}]}]}}))
    with pytest.raises(ValueError, match="corpus source 'gcide' yielded no text"):
        EnglishProse(str(tmp_path), sources=["gcide"], gcide_dir=str(folder)).build()


# The code rule as first written, one alternative per sign: the reference the merged pattern must equal.
REFERENCE_CODE = re.compile(
    r">>>|\.\.\.\s|::|->|=>|==|!=|\w\(|\)\.|\w\[|[{}<>$`\\]|\w_\w|__|\w\.\w+\(|https?:|www\.|\w/\w|\w=\w|\s=\s|;\s*$"
)


@settings(max_examples=1500, deadline=None)
@given(st.text(alphabet="ab_Z1 .=/([)]:;-<>!>\\{}`$hwtps\n", max_size=40))
def test_the_merged_code_pattern_matches_exactly_where_the_reference_does(text):
    assert bool(_CODE.search(text)) == bool(REFERENCE_CODE.search(text))
