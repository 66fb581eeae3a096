"""The experiment spec: which splits to generate, from which words, with which tokenizer.

A split draws each sample's number of pairs n from [min_pairs, max_pairs] (uniformly, or with
P(n) ∝ n for `pairs_weighting: linear`) and its queried key from the pairs whose relative position
q / (n - 1) lies in `query_position` (0 = first pair, 1 = last). Interior bounds are exclusive, so
`[0, 0.25]` means "< 0.25" and `[0.75, 1]` means "> 0.75": exactly the report's front and back
buckets. Train splits may ask several distinct keys per sample (`queries_per_sample`, a recipe knob
that multiplies the training signal); the eval split always asks one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from lmlab import config as C
from lmlab.config import Strict

DATA_DIR = Path(__file__).parent / "data"
PROFILE_DIR = Path(__file__).parent / "profiles"  # training recipes, as lmlab profiles
DEFAULT_SPEC = DATA_DIR / "scenarios.yaml"
DEMO_SPEC = DATA_DIR / "demo.yaml"
EVAL = "eval"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def valid_query_indices(n: int, lo: float, hi: float) -> list[int]:
    """Key indices q of an n-pair sample whose position q/(n-1) lies in [lo, hi] with interior
    bounds exclusive (a bound of exactly 0 or 1 is inclusive)."""
    out = []
    for q in range(n):
        pos = q / (n - 1) if n > 1 else 0.0
        if (pos > lo or lo <= 0.0) and (pos < hi or hi >= 1.0) and lo <= pos <= hi:
            out.append(q)
    return out


class SplitSpec(Strict):
    """One split: the eval split or a training scenario."""

    name: str
    description: str = ""
    min_pairs: int = Field(4, ge=1, description="Fewest key-value pairs in a sample.")
    max_pairs: int = Field(200, ge=1, description="Most key-value pairs in a sample.")
    pairs_weighting: Literal["uniform", "linear"] = Field(
        "uniform", description="Distribution of n: uniform, or linear (P(n) ∝ n)."
    )
    query_position: tuple[float, float] = Field(
        (0.0, 1.0), description="Range of the queried key's relative position q/(n-1)."
    )
    queries_per_sample: int = Field(
        1, ge=1, description="Train only: distinct keys asked per sample (fewer if fewer fit)."
    )

    @model_validator(mode="after")
    def _check(self) -> SplitSpec:
        if not _NAME.match(self.name):
            raise ValueError(f"name {self.name!r}: use letters, digits, '_', '-' or '.'")
        if self.min_pairs > self.max_pairs:
            raise ValueError(
                f"{self.name}: min_pairs {self.min_pairs} > max_pairs {self.max_pairs} "
                "(an impossible range)"
            )
        lo, hi = self.query_position
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(
                f"{self.name}: query_position [{lo}, {hi}] must satisfy 0 <= low < high <= 1 "
                "(an impossible range)"
            )
        empty = [n for n in self.pair_counts() if not valid_query_indices(n, lo, hi)]
        if empty:
            raise ValueError(
                f"{self.name}: no key of a {empty[0]}-pair sample lies in query_position "
                f"[{lo}, {hi}] (an impossible range; widen it or raise min_pairs)"
            )
        return self

    def pair_counts(self) -> range:
        return range(self.min_pairs, self.max_pairs + 1)


class WordsSpec(Strict):
    source: Literal["builtin", "file", "hf"] = Field(
        "builtin", description="builtin generator, a text file (one word a line), or an HF dataset."
    )
    count: int = Field(
        1024, ge=2, description="Words in the pool (builtin: generated; file/hf: the first N)."
    )
    path: str | None = Field(None, description="source=file: the word list.")
    hf_dataset: str | None = Field(None, description="source=hf: dataset name or local path.")
    hf_split: str = "train"
    hf_column: str = "word"
    seed: int = Field(0, description="builtin: which words the generator picks.")


class TokenizerSpec(Strict):
    kind: Literal["bpe", "word"] = Field(
        "bpe", description="bpe: trained on `corpus` (as the original did); word: one id per word."
    )
    vocab_size: int = Field(2048, ge=300, description="bpe only.")
    corpus: str = Field("baseline_mixed", description="bpe: the scenario whose text trains it.")


class ExperimentSpec(Strict):
    name: str = "kv"
    description: str = ""
    seed: int = Field(0, description="Root of every split's independent random stream.")
    train_samples: int = Field(50000, ge=2, description="Samples per training split (incl. val).")
    eval_samples: int = Field(10000, ge=1)
    val_fraction: float = Field(
        0.05, gt=0, le=0.5, description="Share of a train split in its last (validation) shard."
    )
    words: WordsSpec = Field(default_factory=WordsSpec)
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    eval: SplitSpec = Field(default_factory=lambda: SplitSpec(name=EVAL))
    scenarios: list[SplitSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> ExperimentSpec:
        names = [s.name for s in self.scenarios]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"scenario names repeat: {', '.join(dup)}")
        if EVAL in names:
            raise ValueError("'eval' is the eval split's name; rename that scenario")
        if self.eval.queries_per_sample != 1:
            raise ValueError("eval.queries_per_sample must be 1 (evaluation asks one key)")
        if self.tokenizer.kind == "bpe" and self.tokenizer.corpus not in names:
            raise ValueError(
                f"tokenizer.corpus {self.tokenizer.corpus!r} is not a scenario "
                f"(scenarios: {', '.join(names)})"
            )
        return self

    @property
    def splits(self) -> list[SplitSpec]:
        return [*self.scenarios, self.eval]

    def max_pairs(self) -> int:
        return max(s.max_pairs for s in self.splits)

    def split_samples(self, split: SplitSpec) -> tuple[int, int]:
        """(train, val) sample counts of a split; the eval split is all evaluation."""
        if split.name == self.eval.name:
            return self.eval_samples, 0
        val = max(1, round(self.train_samples * self.val_fraction))
        return self.train_samples - val, val


def load_spec(
    spec_file: str | Path | None = None,
    sets: list[str] | tuple[str, ...] = (),
    base: str | Path = DEFAULT_SPEC,
) -> ExperimentSpec:
    """Shipped default < a user's spec file < --set overrides. A file that lists `scenarios`
    replaces the default list (lists are not merged)."""
    return C.resolve(ExperimentSpec, config=spec_file, sets=sets, base=C.load_file(base))
