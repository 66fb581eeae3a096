"""Answer metrics and the failure taxonomy.

`qa_f1` is LongBench's `qa_f1_score` (metrics.py: lower-case, strip ASCII punctuation, drop the
articles a/an/the, collapse whitespace, token-count F1), taken as the max over the gold answers as
LongBench's scorer does. `exact_match` is SQuAD's (the same normalisation, equality). RULER's
`string_match_all` (the fraction of gold strings found in the output, case-insensitive) and
`string_match_part` (1 if any is found). `first_word` is the retrieval study's exact match of the
first generated word.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_PUNCT = set(string.punctuation)
# tasks whose prediction LongBench cuts to its first line before scoring (eval.py)
FIRST_LINE_TASKS = ("trec", "triviaqa", "samsum", "lsht")


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def token_f1(prediction: list[str], gold: list[str]) -> float:
    common = Counter(prediction) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, gold: str) -> float:
    return token_f1(normalize_answer(prediction).split(), normalize_answer(gold).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def string_match_all(prediction: str, golds: list[str]) -> float:
    low = prediction.lower()
    return sum(g.lower() in low for g in golds) / len(golds) if golds else 0.0


def string_match_part(prediction: str, golds: list[str]) -> float:
    low = prediction.lower()
    return float(any(g.lower() in low for g in golds))


def first_word(prediction: str, gold: str) -> float:
    words = prediction.split()
    return float(bool(words) and words[0] == gold.strip())


def score(metric: str, prediction: str, golds: list[str], task: str = "") -> float:
    """The example's score in [0, 1]: per-gold metrics take the max over golds."""
    if task in FIRST_LINE_TASKS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    if metric == "string_match_all":
        return string_match_all(prediction, golds)
    if metric == "string_match_part":
        return string_match_part(prediction, golds)
    fn = {"qa_f1": qa_f1_score, "exact_match": exact_match, "first_word": first_word}[metric]
    return max((fn(prediction, g) for g in golds), default=0.0)


# ---------------------------------------------------------------- failures

_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|i cannot|i can'?t|i won'?t|as an ai|i am unable|i'?m unable)",
    re.IGNORECASE,
)


def classify(response: dict, length_is_failure: bool = True) -> str | None:
    """The failure type of one response row (None: answered). `response` has error_type (set by
    the engine for transport failures), text and finish_reason. A reply cut at max_new_tokens is
    TRUNCATED unless the metric reads only its first word (`length_is_failure=False`)."""
    if response.get("error_type"):
        return response["error_type"]
    text = response.get("text") or ""
    if not text.strip():
        return "EMPTY_OUTPUT"
    if _REFUSAL.match(text):
        return "REFUSAL"
    if response.get("finish_reason") == "length" and length_is_failure:
        return "TRUNCATED"
    if "\ufffd" in text:  # undecodable bytes: the output is not text the metric can read
        return "FORMAT_ERROR"
    return None


def error_type_for(message: str, status: int | None = None) -> str:
    """Map a transport or engine error to the taxonomy."""
    low = message.lower()
    if status == 429 or "rate limit" in low or "429" in low:
        return "RATE_LIMITED"
    if "timeout" in low or "timed out" in low:
        return "TIMEOUT"
    if "exceeds the context" in low or "context length" in low or "maximum context" in low:
        return "CONTEXT_LENGTH_EXCEEDED"
    return "ENGINE_ERROR"
