"""The conversational corpus sources (chitchat, ShareGPT) and the shares of data=english_mix."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from jasper.data.conversations import (
    chitchat_texts,
    looks_english,
    passages,
    sharegpt_conversations,
    sharegpt_passages,
    sharegpt_questions,
)
from jasper.data.corpus import EnglishProse

REPO = Path(__file__).resolve().parents[1]


def fake_chitchat(path, chats):
    """A Chit-Chat JSON file: ``chats`` lists of turns, each a list of message texts."""
    data = {
        f"chat{i}": {"messages": [[{"text": t, "sender": "a"} for t in turn] for turn in turns]}
        for i, turns in enumerate(chats)
    }
    path.write_text(json.dumps(data))
    return str(path)


def fake_sharegpt(path, records, cut_off=True):
    """A ShareGPT JSON array of ``records`` ((question, answer) pairs), cut off inside one more record."""
    body = [
        {"id": str(i), "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        for i, (q, a) in enumerate(records)
    ]
    text = json.dumps(body, indent=2)
    if cut_off:
        text = text[:-2] + ',\n  {"id": "late", "conversations": [{"from": "human", "value": "How do I cut'
    path.write_text(text)
    return str(path)


def test_chitchat_turns_join_a_speakers_messages(tmp_path):
    path = fake_chitchat(
        tmp_path / "chat.json", [[["Hello", "how are you doing today?"], ["I am fine, thanks."]]]
    )
    assert list(chitchat_texts(path)) == ["Hello how are you doing today?", "I am fine, thanks."]


def test_the_cut_off_sharegpt_file_yields_every_complete_record_and_counts_the_last(tmp_path):
    path = fake_sharegpt(tmp_path / "sg.json", [("Why is the sky blue?", "Light scatters."), ("Q2", "A2")])
    with pytest.raises(json.JSONDecodeError):
        json.loads((tmp_path / "sg.json").read_text())  # what a standard parser does with the shipped file
    drops = Counter()
    conversations = list(sharegpt_conversations(path, drops))
    assert [c[0]["value"] for c in conversations] == ["Why is the sky blue?", "Q2"]
    assert drops == {"cut_off": 1}
    complete = fake_sharegpt(tmp_path / "whole.json", [("Q", "A")], cut_off=False)
    drops = Counter()
    assert len(list(sharegpt_conversations(complete, drops))) == 1 and not drops


def test_questions_are_the_human_turns_and_code_blocks_are_counted(tmp_path):
    records = [("How do rainbows form after a storm?", "Sun."), ("Fix this:\n```\nx = 1\n```", "Done.")]
    drops = Counter()
    assert list(sharegpt_questions(fake_sharegpt(tmp_path / "sg.json", records), drops)) == [
        "How do rainbows form after a storm?"
    ]
    assert drops == {"code_block": 1, "cut_off": 1}


@pytest.mark.parametrize("max_words", [3, 6, 10, 50])
def test_passages_keep_whole_sentences_within_the_bound(max_words):
    sentences = ["Alpha beta gamma.", "Delta epsilon zeta eta.", "Theta iota.", "Kappa lambda mu nu xi."]
    out = list(passages(" ".join(sentences) + "\n\nOmicron pi rho.", max_words))
    assert " ".join(out) == " ".join([*sentences, "Omicron pi rho."])  # nothing lost, order kept
    for passage in out:  # a passage is over the bound only when it is one sentence
        assert len(passage.split()) <= max_words or passage in sentences
    assert "Omicron pi rho." in out or out[-1].endswith("Omicron pi rho.")
    assert not any("Kappa" in p and "Omicron" in p for p in out)  # never across paragraphs


def test_passages_drop_code_and_strip_list_markers():
    drops = Counter()
    answer = (
        "Here are the steps:\n\n1. Boil the water first.\n2. Add the tea.\n\n```python\nprint(1)\n```\nDone."
    )
    out = list(passages(answer, 80, drops))
    assert out == ["Here are the steps:", "Boil the water first. Add the tea.", "Done."]
    assert drops == {"code_block": 1}


def test_sharegpt_passages_are_the_answers(tmp_path):
    path = fake_sharegpt(
        tmp_path / "sg.json", [("Question here?", "First answer sentence. Second one here.")]
    )
    assert list(sharegpt_passages(4, path)) == ["First answer sentence.", "Second one here."]


@pytest.mark.parametrize(
    "text, english",
    [
        ("I'm studying human development. I'm guessing you're public health?", True),
        ("Natürlich, gerne! Hier sind einige weitere coole Prompts für dich und die anderen:", False),
        ("Bedankt voor je tijd en feedback, het was een fijne dag voor de hele familie.", False),
        ("Heaven Seagull Body Wings Flight Perfection Learning Limitation Telepathy Elder", False),
        ("hey there", True),
    ],
)
def test_looks_english(text, english):
    assert looks_english(text) is english


def mix_corpus(tmp_path, **settings):
    chitchat = fake_chitchat(
        tmp_path / "chat.json",
        [[[f"we talked about the weather on day {i} and it was nice"]] for i in range(300)],
    )
    answers = [
        (
            f"What happened on day {i} of the long trip?",
            f"On day {i} the group walked to the old town by the river.",
        )
        for i in range(200)
    ]
    sharegpt = fake_sharegpt(tmp_path / "sg.json", answers)
    return EnglishProse(
        str(tmp_path / "cache"),
        sources=["chitchat", "sharegpt_questions", "sharegpt_passages"],
        chitchat_file=chitchat,
        sharegpt_file=sharegpt,
        **settings,
    )


def test_shares_set_the_mix_at_the_largest_size_the_scarcest_source_allows(tmp_path):
    corpus = mix_corpus(tmp_path, shares={"chitchat": 2, "sharegpt_questions": 1, "sharegpt_passages": 1})
    stats = corpus.build()
    # questions and passages keep 200 each, chitchat 300: with shares 2:1:1 the corpus is 600 texts, 300/150/150
    sizes = {name: counts["kept"] for name, counts in stats["sources"].items()}
    assert sizes == {"chitchat": 300, "sharegpt_questions": 150, "sharegpt_passages": 150}
    assert stats["sources"]["sharegpt_questions"]["over_share"] == 50
    assert stats["sources"]["sharegpt_questions"]["cut_off"] == 1
    texts = list(corpus)
    assert len(texts) == len(set(texts)) == 600
    assert sum("weather" in t for t in texts) == 300


def test_the_shares_name_the_sources_and_a_zero_share_leaves_one_out(tmp_path):
    shares = {"chitchat": 1, "sharegpt_questions": 0, "sharegpt_passages": 1}
    assert EnglishProse(str(tmp_path), sources=None, shares=shares).sources == [
        "chitchat",
        "sharegpt_passages",
    ]
    corpus = EnglishProse(str(tmp_path), sources=None, shares={"sharegpt_passages": 1, "chitchat": 3})
    assert corpus.sources == ["sharegpt_passages", "chitchat"]


def test_a_total_larger_than_the_sources_allow_fails_naming_the_key(tmp_path):
    corpus = mix_corpus(
        tmp_path, shares={"chitchat": 1, "sharegpt_questions": 1, "sharegpt_passages": 1}, total=1000
    )
    with pytest.raises(ValueError, match="data.source.total=1000"):
        corpus.build()


def test_a_text_in_two_sources_is_kept_once_by_the_first(tmp_path):
    same = "We walked to the old town by the river on that day."
    chitchat = fake_chitchat(tmp_path / "chat.json", [[[same]], [["another day of nice weather for us all"]]])
    sharegpt = fake_sharegpt(tmp_path / "sg.json", [("Where did you walk that day?", same)])
    corpus = EnglishProse(
        str(tmp_path / "cache"),
        sources=["chitchat", "sharegpt_passages"],
        chitchat_file=chitchat,
        sharegpt_file=sharegpt,
    )
    stats = corpus.build()
    assert stats["sources"]["sharegpt_passages"]["duplicate_across"] == 1
    assert list(corpus).count(same) == 1


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"shares": {"chitchat": 1}}, "data.source.sources=null"),
        ({"shares": {"chitchat": 1, "sharegpt_questions": 1, "sharegpt_passages": -1}}, "data.source.shares"),
        ({"total": 10}, "data.source.total"),
        ({"passage_words": 2}, "data.source.passage_words"),
    ],
)
def test_bad_mix_settings_fail_naming_the_key(tmp_path, settings, key):
    with pytest.raises(ValueError, match=key):
        mix_corpus(tmp_path, **settings)


def test_train_py_runs_on_data_english_mix(tmp_path):
    """The real entry point on `data=english_mix`: the corpus is built with its counts, then stage 1 trains."""
    chitchat = fake_chitchat(
        tmp_path / "chat.json",
        [[[f"we talked about the weather on day {i} and it was nice"]] for i in range(80)],
    )
    answers = [
        (f"What happened on day {i} of the trip?", f"On day {i} we walked to the old town.")
        for i in range(80)
    ]
    sharegpt = fake_sharegpt(tmp_path / "sg.json", answers)
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "data=english_mix",
            "debug=fast",
            "data.source.shares={gcide:0,chitchat:2,sharegpt_questions:1,sharegpt_passages:1}",
            f"data.source.chitchat_file={chitchat}",
            f"data.source.sharegpt_file={sharegpt}",
            f"paths.run_dir={tmp_path / 'run'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "stage1" / "student.pt").exists()
    (stats,) = (tmp_path / "cache" / "corpora").glob("english_prose-*/stats.json")
    sizes = {name: counts["kept"] for name, counts in json.loads(stats.read_text())["sources"].items()}
    assert sizes == {"chitchat": 80, "sharegpt_questions": 40, "sharegpt_passages": 40}
