"""The three public preference sets, streamed through the real `datasets.load_dataset` calls.

    hh             Anthropic/hh-rlhf: harmless-base, helpful-base, helpful-online,
                   helpful-rejection-sampled (never red-team-attempts: it has no pairs)
                   columns chosen, rejected (whole "\\n\\nHuman: ... \\n\\nAssistant: ..." transcripts)
    ultrafeedback  HuggingFaceH4/ultrafeedback_binarized, split train_prefs / test_prefs
                   columns prompt, chosen, rejected (message lists), score_chosen, score_rejected
    stackexchange  HuggingFaceH4/stack-exchange-preferences
                   columns question, answers [{text, pm_score, selected, ...}]

Each loader turns rows into pairs (pairs.py) and counts, per reason, the rows it could not use;
nothing malformed is kept. `local=` reads a file or folder in the same schema instead of the Hub
(the tests, and a machine without the internet; `data/` ships a small sample of each).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmlab.data.sources import HUB, HubDataset, SourceUnavailable, open_rows
from lmlab.errors import LmlabError
from lmlab.studies.preference.pairs import Malformed, hh_pair, make_pair

SAMPLE_DIR = Path(__file__).parent / "data"

HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
_HH_SPLITS = ("train", "test")
for _subset in HH_SUBSETS:
    HUB[f"hh/{_subset}"] = HubDataset(
        f"hh/{_subset}", "Anthropic/hh-rlhf", None, _HH_SPLITS, ("chosen", "rejected"),
        data_dir=_subset,
    )  # fmt: skip
HUB["ultrafeedback"] = HubDataset(
    "ultrafeedback",
    "HuggingFaceH4/ultrafeedback_binarized",
    None,
    ("train_prefs", "test_prefs"),
    ("prompt", "chosen", "rejected", "score_chosen", "score_rejected"),
)
HUB["stackexchange"] = HubDataset(
    "stackexchange",
    "HuggingFaceH4/stack-exchange-preferences",
    None,
    ("train",),
    ("question", "answers"),
)


@dataclass
class SourceStats:
    rows: int = 0
    pairs: int = 0
    malformed: Counter = field(default_factory=Counter)  # reason -> rows


# ---------------------------------------------------------------- row -> pairs


def hh_pairs(row: dict) -> list[dict]:
    return [hh_pair(row.get("chosen"), row.get("rejected"), src="hh-rlhf")]


def _last_assistant(messages: object) -> tuple[list[dict], str]:
    if not isinstance(messages, list) or not messages:
        raise Malformed("a response is not a message list")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise Malformed("a response list does not end with an assistant message")
    prefix = [{"role": m.get("role"), "content": m.get("content")} for m in messages[:-1]]
    return prefix, last.get("content")


def ultrafeedback_pairs(row: dict) -> list[dict]:
    prefix, chosen = _last_assistant(row.get("chosen"))
    prefix_r, rejected = _last_assistant(row.get("rejected"))
    if prefix != prefix_r:
        raise Malformed("chosen and rejected differ before the response")
    if not prefix:  # some rows carry the prompt only in `prompt`
        prefix = [{"role": "user", "content": row.get("prompt")}]
    sc, sr = row.get("score_chosen"), row.get("score_rejected")
    if not isinstance(sc, int | float) or not isinstance(sr, int | float):
        raise Malformed("scores are not numbers")
    if sc <= sr:
        raise Malformed("score_chosen <= score_rejected")
    return [make_pair("ultrafeedback-binarized", prefix, chosen, rejected, margin=sc - sr)]


def stackexchange_pairs(row: dict, max_pairs: int = 3) -> list[dict]:
    """Pairs of answers with different pm_score, the higher chosen; the largest score gaps first
    (the clearest preferences), at most `max_pairs` per question."""
    question, answers = row.get("question"), row.get("answers")
    if not isinstance(question, str) or not question.strip():
        raise Malformed("empty question")
    if not isinstance(answers, list):
        raise Malformed("answers is not a list")
    scored = [
        (a["pm_score"], i, a["text"])
        for i, a in enumerate(answers)
        if isinstance(a, dict)
        and isinstance(a.get("pm_score"), int | float)
        and isinstance(a.get("text"), str)
        and a["text"].strip()
    ]
    candidates = [
        (hi[0] - lo[0], hi[1], lo[1], hi, lo) for hi in scored for lo in scored if hi[0] > lo[0]
    ]
    if not candidates:
        raise Malformed("no two answers with different scores")
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    messages = [{"role": "user", "content": question}]
    return [
        make_pair("stack-exchange-preferences", messages, hi[2], lo[2], margin=gap)
        for gap, _, _, hi, lo in candidates[:max_pairs]
    ]


# ---------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    name: str  # the CLI's name
    hub_keys: tuple[str, ...]  # HUB entries streamed one after another
    split: str  # the Hub split of training pairs
    sample: str  # the shipped sample file under data/


SOURCES = {
    "hh": Source("hh", tuple(f"hh/{s}" for s in HH_SUBSETS), "train", "hh_rlhf_sample.jsonl"),
    "ultrafeedback": Source(
        "ultrafeedback", ("ultrafeedback",), "train_prefs", "ultrafeedback_sample.jsonl"
    ),
    "stackexchange": Source(
        "stackexchange", ("stackexchange",), "train", "stackexchange_sample.jsonl"
    ),
}


def parse_sources(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if unknown or not names:
        raise LmlabError(
            f"--sources: unknown source {', '.join(unknown) or '(none)'!r} "
            f"(known: {', '.join(SOURCES)})"
        )
    return names


def source_rows(name: str, local: str | Path | None) -> Iterator[dict]:
    try:
        yield from _source_rows(name, local)
    except SourceUnavailable as e:
        raise SourceUnavailable(
            f"{e} (with lmlab prefs download: --local {name}=PATH, or --sample for the samples "
            "shipped with lmlab)"
        ) from None


def _source_rows(name: str, local: str | Path | None) -> Iterator[dict]:
    source = SOURCES[name]
    if local is not None:  # one local copy stands for all of the source's Hub parts
        rows = open_rows(source.hub_keys[0], "train", local)
        yield from rows or ()
        return
    for key in source.hub_keys:
        rows = open_rows(key, source.split)
        if rows is None:
            raise LmlabError(f"{name}: {HUB[key].path} has no split {source.split!r}")
        yield from rows


def load_pairs(
    name: str,
    local: str | Path | None = None,
    max_pairs: int | None = None,
    max_pairs_per_question: int = 3,
) -> tuple[list[dict], SourceStats]:
    """Up to `max_pairs` pairs from one source, and the counts of what was read and refused."""
    to_pairs = {
        "hh": hh_pairs,
        "ultrafeedback": ultrafeedback_pairs,
        "stackexchange": lambda r: stackexchange_pairs(r, max_pairs_per_question),
    }[name]
    stats, out = SourceStats(), []
    for row in source_rows(name, local):
        if max_pairs is not None and len(out) >= max_pairs:
            break
        stats.rows += 1
        try:
            new = to_pairs(row)
        except Malformed as e:
            stats.malformed[str(e)] += 1
            continue
        except (KeyError, TypeError, AttributeError) as e:  # a row of the wrong shape
            stats.malformed[f"wrong shape ({type(e).__name__})"] += 1
            continue
        out.extend(new[: None if max_pairs is None else max_pairs - len(out)])
    stats.pairs = len(out)
    return out, stats
