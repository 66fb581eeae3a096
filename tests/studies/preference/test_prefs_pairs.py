"""Pair records, HH transcripts and the pairs file: parsing edge cases and file:line errors."""

import json

import pytest

from lmlab.errors import LmlabError
from lmlab.studies.preference.pairs import (
    Malformed,
    hh_pair,
    md5_16,
    parse_transcript,
    read_pairs,
)


def test_multi_turn_transcript_keeps_the_history_as_prefix():
    shared = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?"
    pair = hh_pair(shared + "\n\nAssistant: 4.", shared + "\n\nAssistant: 5.")
    assert pair["prefix"]["messages"] == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?"},
    ]
    assert (pair["chosen"], pair["rejected"]) == ("4.", "5.")
    assert pair["prefix_id"] == md5_16("Hi there")  # the first user message, not the last


def test_empty_middle_turn_is_kept_but_an_empty_response_is_malformed():
    msgs = parse_transcript("\n\nHuman: a\n\nAssistant: \n\nHuman: b\n\nAssistant: c")
    assert [m["content"] for m in msgs] == ["a", "", "b", "c"]
    with pytest.raises(Malformed, match="empty response"):
        hh_pair("\n\nHuman: q\n\nAssistant: ", "\n\nHuman: q\n\nAssistant: fine")


def test_transcript_not_ending_with_an_assistant_turn_is_malformed():
    text = "\n\nHuman: q\n\nAssistant: a\n\nHuman: and?"
    with pytest.raises(Malformed, match="does not end with an assistant turn"):
        hh_pair(text, text)


def test_transcripts_that_differ_before_the_response_are_malformed():
    with pytest.raises(Malformed, match="differ before"):
        hh_pair("\n\nHuman: q1\n\nAssistant: a", "\n\nHuman: q2\n\nAssistant: b")


def test_response_text_that_mentions_human_inline_stays_in_the_turn():
    msgs = parse_transcript("\n\nHuman: say Human: twice\n\nAssistant: Human: Human:")
    assert msgs == [
        {"role": "user", "content": "say Human: twice"},
        {"role": "assistant", "content": "Human: Human:"},
    ]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pairs_file_with_a_missing_field_names_file_and_line(tmp_path):
    good = {
        "prefix": {"messages": [{"role": "user", "content": "q"}]},
        "chosen": "a",
        "rejected": "b",
    }
    bad = {"prefix": good["prefix"], "chosen": "a"}
    path = _write(tmp_path / "pairs.jsonl", [good, good, bad])
    with pytest.raises(LmlabError, match=r"pairs.jsonl:3: missing field 'rejected'"):
        read_pairs(path)


def test_legacy_prompt_rows_are_read_as_one_user_message(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"prompt": "hello", "chosen": "a", "rejected": "b"}])
    (pair,) = read_pairs(path)
    assert pair["prefix"]["messages"] == [{"role": "user", "content": "hello"}]
    assert pair["prefix_id"] == md5_16("hello") and pair["id"] and pair["src"] == "unknown"


def test_prefix_that_ends_with_the_assistant_names_the_line(tmp_path):
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    path = _write(
        tmp_path / "p.jsonl", [{"prefix": {"messages": msgs}, "chosen": "x", "rejected": "y"}]
    )
    with pytest.raises(LmlabError, match=r"p.jsonl:1: prefix does not end with a user message"):
        read_pairs(path)
