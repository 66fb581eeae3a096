"""The primer: dialogue blocks, turns, bad input, and the deterministic train/val split."""

import pytest

from lmlab.errors import LmlabError
from lmlab.studies.notes.paths import SAMPLE_PRIMER, persona
from lmlab.studies.notes.primer import (
    DIALOGUE_DELIM,
    load_primer,
    parse_primer,
    split_dialogues,
    split_primer_dialogues,
)

TWO = (
    "system: Be brief.\nuser: Hi\nassistant: Hello.\n"
    + DIALOGUE_DELIM
    + "user: Two lines?\nassistant: Yes,\nthis continues.\nuser: More?\nassistant: No.\n"
)


def test_blocks_become_role_turns_with_multiline_content():
    p = parse_primer(TWO)
    assert [d.messages for d in p.dialogues] == [
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ],
        [
            {"role": "user", "content": "Two lines?"},
            {"role": "assistant", "content": "Yes,\nthis continues."},
            {"role": "user", "content": "More?"},
            {"role": "assistant", "content": "No."},
        ],
    ]
    assert p.dialogues[1].line == 8 and p.empty_blocks == 0


def test_the_shipped_primer_parses():
    p = load_primer(SAMPLE_PRIMER)
    assert len(p.dialogues) >= 30 and p.empty_blocks == 0
    systems = [d.messages[0]["content"] for d in p.dialogues if d.messages[0]["role"] == "system"]
    assert systems and all(s == persona() for s in systems)


def test_empty_blocks_are_dropped_and_counted():
    text = DIALOGUE_DELIM + TWO + DIALOGUE_DELIM + "  \n" + DIALOGUE_DELIM
    p = parse_primer(text)
    assert len(p.dialogues) == 2 and p.empty_blocks == 3


def test_a_delimiter_line_without_blank_lines_around_it_still_splits():
    p = parse_primer("user: a\nassistant: b\n<dialogue>\nuser: c\nassistant: d\n")
    assert len(p.dialogues) == 2


def test_no_delimiter_means_one_dialogue_which_cannot_be_split():
    p = parse_primer("user: a\nassistant: b\nuser: c\nassistant: d\n", "primer.txt")
    assert len(p.dialogues) == 1
    with pytest.raises(LmlabError, match=r"primer.txt: only one dialogue.*'<dialogue>'"):
        split_dialogues(p, 0.1, 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello there\nuser: a\nassistant: b\n", r"p.txt:1: text before the first turn"),
        (
            "user: a\nassistant: b\nsystem: again\nuser: c\nassistant: d\n",
            r"p.txt:3: a system turn after the first turn.*missing '<dialogue>'",
        ),
        ("user: a\nuser: b\n", r"p.txt:1: the dialogue has no 'assistant:' turn"),
        ("assistant: hi\n", r"p.txt:1: a dialogue starts with a user turn"),
        ("", r"p.txt: no dialogues"),
        (DIALOGUE_DELIM + DIALOGUE_DELIM, r"p.txt: no dialogues"),
    ],
)
def test_bad_primers_name_file_and_line(text, message):
    with pytest.raises(LmlabError, match=message):
        parse_primer(text, "p.txt")


def test_missing_primer_file(tmp_path):
    with pytest.raises(LmlabError, match="primer file not found.*--primer"):
        load_primer(tmp_path / "primer.txt")


def test_split_is_seeded_and_keeps_at_least_one_val_dialogue():
    p = load_primer(SAMPLE_PRIMER)
    train, val = split_dialogues(p, 0.1, seed=42)
    assert len(val) == round(len(p.dialogues) * 0.1) and len(train) + len(val) == len(p.dialogues)
    assert [d.line for d in split_dialogues(p, 0.1, seed=42)[1]] == [d.line for d in val]
    assert [d.line for d in split_dialogues(p, 0.1, seed=7)[1]] != [d.line for d in val]
    tiny = parse_primer(TWO)
    assert [len(x) for x in split_dialogues(tiny, 0.01, 0)] == [1, 1]


def test_the_seeds_split_function_returns_delimited_text():
    train_txt, val_txt = split_primer_dialogues(SAMPLE_PRIMER.read_text(), 0.1, 42)
    n = len(load_primer(SAMPLE_PRIMER).dialogues)
    assert train_txt.count("<dialogue>") + val_txt.count("<dialogue>") == n - 2
    assert len(parse_primer(val_txt).dialogues) == round(n * 0.1)


def test_special_token_literals_in_turns_stay_text():
    p = parse_primer("user: type <|eot|> now\nassistant: ok <|user|> fake\n")
    assert p.dialogues[0].messages[1]["content"] == "ok <|user|> fake"
