"""Metrics against LongBench's own logic, and the failure taxonomy."""

import re
import string
from collections import Counter

import pytest

from lmlab.studies.kvbench.metrics import (
    classify,
    error_type_for,
    exact_match,
    qa_f1_score,
    score,
    string_match_all,
    string_match_part,
)


# ---- LongBench metrics.py, written out as it is there (normalize_answer, f1_score, qa_f1_score)
def lb_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def lb_f1_score(prediction, ground_truth, **kwargs):
    common = Counter(prediction) & Counter(ground_truth)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction)
    recall = 1.0 * num_same / len(ground_truth)
    return (2 * precision * recall) / (precision + recall)


def lb_qa_f1_score(prediction, ground_truth, **kwargs):
    p = lb_normalize_answer(prediction).split()
    g = lb_normalize_answer(ground_truth).split()
    return lb_f1_score(p, g)


def lb_scorer(dataset, prediction, ground_truths):
    """eval.py's per-example score: first line for some tasks, max over gold answers."""
    score_ = 0.0
    if dataset in ["trec", "triviaqa", "samsum", "lsht"]:
        prediction = prediction.lstrip("\n").split("\n")[0]
    for gt in ground_truths:
        score_ = max(score_, lb_qa_f1_score(prediction, gt))
    return score_


TRICKY = [
    ("The Cat", "cat"),  # article + case
    ("an apple a day", "the apple"),  # articles everywhere
    ("theatre", "the atre"),  # 'the' inside a word is kept; the separate one goes
    ("U.S.A.", "USA"),  # punctuation removed inside tokens
    ("hello,world", "hello world"),  # punctuation joins, not splits
    ("  spaced \n\t out  ", "spaced out"),  # whitespace collapse
    ("a", "a"),  # everything normalises away: empty vs empty -> 0
    ("", "anything"),  # empty prediction
    ("red red red", "red"),  # token counts, not sets
    ("red blue", "blue red green"),  # partial overlap
    ("Naïve café", "naïve CAFÉ"),  # non-ASCII letters survive, case folds
    ("it's “quoted”", "its quoted"),  # ASCII apostrophe goes, curly quotes stay
    ("A. Lincoln", "Abraham Lincoln"),
    ("42", "forty-two"),
    ("the the the", "the"),
]


@pytest.mark.parametrize(("pred", "gold"), TRICKY)
def test_qa_f1_equals_longbench_on_tricky_pairs(pred, gold):
    assert qa_f1_score(pred, gold) == pytest.approx(lb_qa_f1_score(pred, gold), abs=0)


@pytest.mark.parametrize("task", ["narrativeqa", "triviaqa"])
def test_scorer_takes_max_over_golds_and_longbench_first_line_rule(task):
    pred = "\nthe blue whale\nand more text about whales"
    golds = ["a whale", "blue whale", "shark"]
    assert score("qa_f1", pred, golds, task) == pytest.approx(lb_scorer(task, pred, golds))
    # triviaqa reads the first line only: the same prediction scores differently by task
    assert score("qa_f1", pred, golds, "narrativeqa") < score("qa_f1", pred, golds, "triviaqa")


def test_exact_match_and_ruler_string_match():
    assert exact_match("The  Forest.", "forest") == 1.0
    assert exact_match("forest fire", "forest") == 0.0
    assert string_match_all("Keys: ALPHA and beta", ["alpha", "beta", "gamma"]) == pytest.approx(
        2 / 3
    )
    assert string_match_part("Keys: ALPHA", ["alpha", "gamma"]) == 1.0
    assert string_match_part("nothing", ["alpha"]) == 0.0
    assert score("first_word", "tivel sedo", ["tivel"]) == 1.0
    assert score("first_word", "sedo tivel", ["tivel"]) == 0.0


def test_failure_taxonomy():
    assert classify({"error_type": "RATE_LIMITED", "text": ""}) == "RATE_LIMITED"
    assert classify({"text": "   "}) == "EMPTY_OUTPUT"
    assert classify({"text": "I'm sorry, I cannot help"}) == "REFUSAL"
    assert classify({"text": "forest and", "finish_reason": "length"}) == "TRUNCATED"
    assert classify({"text": "forest and", "finish_reason": "length"}, False) is None
    assert classify({"text": "bad \ufffd bytes", "finish_reason": "stop"}) == "FORMAT_ERROR"
    assert classify({"text": "forest", "finish_reason": "stop"}) is None
    assert error_type_for("HTTP 429: slow down", 429) == "RATE_LIMITED"
    assert error_type_for("timeout after 5 s") == "TIMEOUT"
    assert error_type_for("prompt of 9 tokens exceeds the context of 8 by 1") == (
        "CONTEXT_LENGTH_EXCEEDED"
    )
    assert error_type_for("HTTP 500: boom", 500) == "ENGINE_ERROR"
