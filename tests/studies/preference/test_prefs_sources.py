"""The three loaders through the real `datasets.load_dataset` on small local files in each Hub
schema (jsonl and parquet), malformed rows counted per reason, and the shipped samples."""

import pytest

from lmlab.errors import LmlabError
from lmlab.studies.preference.sources import SAMPLE_DIR, SOURCES, load_pairs, parse_sources
from tests.fixtures.hub_files import write_jsonl, write_parquet


def hh_rows():
    return [
        {
            "chosen": "\n\nHuman: q1\n\nAssistant: good",
            "rejected": "\n\nHuman: q1\n\nAssistant: bad",
        },
        {
            "chosen": "\n\nHuman: q2\n\nAssistant: a\n\nHuman: more?\n\nAssistant: yes",
            "rejected": "\n\nHuman: q2\n\nAssistant: a\n\nHuman: more?\n\nAssistant: no",
        },
        {"chosen": "\n\nHuman: q3", "rejected": "\n\nHuman: q3"},  # no assistant turn
    ]


def uf_rows():
    def msgs(q, a):
        return [{"content": q, "role": "user"}, {"content": a, "role": "assistant"}]

    return [
        {"prompt": "p1", "prompt_id": "1", "chosen": msgs("p1", "yes"), "rejected": msgs("p1", "no"),
         "messages": msgs("p1", "yes"), "score_chosen": 9.0, "score_rejected": 3.0},
        {"prompt": "p2", "prompt_id": "2", "chosen": msgs("p2", "x"), "rejected": msgs("p2", "y"),
         "messages": msgs("p2", "x"), "score_chosen": 5.0, "score_rejected": 5.0},  # tie
    ]  # fmt: skip


def se_rows():
    def ans(i, score, text):
        return {"answer_id": i, "author": "a", "author_id": i, "author_profile": "", "pm_score": score,
                "selected": False, "text": text}  # fmt: skip

    return [
        {"qid": 1, "question": "Q1?", "answers": [ans(1, 1, "low"), ans(2, 8, "high"), ans(3, 4, "mid")],
         "date": "", "metadata": []},
        {"qid": 2, "question": "Q2?", "answers": [ans(4, 2, "only")], "date": "", "metadata": []},
    ]  # fmt: skip


def test_hh_loader_on_local_jsonl(tmp_path):
    pairs, stats = load_pairs("hh", write_jsonl(tmp_path / "train.jsonl", hh_rows()))
    assert [p["chosen"] for p in pairs] == ["good", "yes"]
    assert pairs[1]["prefix"]["messages"][-1] == {"role": "user", "content": "more?"}
    assert stats.rows == 3 and stats.pairs == 2
    assert stats.malformed == {"transcript does not end with an assistant turn": 1}
    assert {p["src"] for p in pairs} == {"hh-rlhf"}


def test_ultrafeedback_loader_on_local_parquet(tmp_path):
    pairs, stats = load_pairs(
        "ultrafeedback", write_parquet(tmp_path / "train_prefs.parquet", uf_rows())
    )
    assert len(pairs) == 1 and pairs[0]["chosen"] == "yes" and pairs[0]["rejected"] == "no"
    assert pairs[0]["margin"] == 6.0 and pairs[0]["prefix"]["messages"] == [
        {"role": "user", "content": "p1"}
    ]
    assert stats.malformed == {"score_chosen <= score_rejected": 1}


def test_stackexchange_pairs_prefer_the_higher_score_with_largest_gaps_first(tmp_path):
    pairs, stats = load_pairs(
        "stackexchange", write_jsonl(tmp_path / "se.jsonl", se_rows()), max_pairs_per_question=2
    )
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("high", "low"), ("high", "mid")]
    assert stats.malformed == {"no two answers with different scores": 1}


def test_max_pairs_caps_each_source(tmp_path):
    pairs, _ = load_pairs(
        "stackexchange", write_jsonl(tmp_path / "se.jsonl", se_rows()), max_pairs=1
    )
    assert len(pairs) == 1


def test_a_file_in_another_schema_is_a_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "hello"}])
    with pytest.raises(LmlabError, match="lacks the column"):
        load_pairs("hh", path)


def test_unknown_source_name_is_an_error():
    with pytest.raises(LmlabError, match=r"unknown source 'reddit'.*known: hh, ultrafeedback"):
        parse_sources("hh,reddit")


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_shipped_samples_load_with_some_malformed_rows_counted(name):
    pairs, stats = load_pairs(name, SAMPLE_DIR / SOURCES[name].sample)
    assert len(pairs) >= 20 and sum(stats.malformed.values()) >= 1
    assert all(p["prefix"]["messages"][-1]["role"] == "user" for p in pairs)


def test_offline_without_a_local_copy_says_how_to_provide_one(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LmlabError, match=r"offline mode.*--local hh=PATH, or --sample"):
        load_pairs("hh")
