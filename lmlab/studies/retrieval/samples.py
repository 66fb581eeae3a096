"""Samples: n distinct key→value lines, then `Q <key>` and `A <value>` (repeated for extra queries).

    bako tivel
    rumi sedo
    Q rumi
    A sedo

Every split draws from its own random stream, seeded by (experiment seed, the split's name), so
no split's samples depend on another's and adding a scenario changes nothing else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from lmlab.errors import LmlabError
from lmlab.studies.retrieval.spec import SplitSpec, valid_query_indices


def stream(seed: int, name: str) -> np.random.Generator:
    """The split's own generator: independent of every other split's by construction."""
    tag = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed % 2**63, tag]))


@dataclass
class Sample:
    keys: list[str]
    values: list[str]
    queries: list[int]  # indices of the asked keys; the first is "the" query

    @property
    def num_pairs(self) -> int:
        return len(self.keys)

    @property
    def context(self) -> str:
        return "".join(f"{k} {v}\n" for k, v in zip(self.keys, self.values, strict=True))

    def chunks(self) -> list[tuple[str, bool]]:
        """The text as (piece, is_answer) pieces; answers are " <value>" after each "A"."""
        out: list[tuple[str, bool]] = []
        lead = self.context
        for q in self.queries:
            out.append((f"{lead}Q {self.keys[q]}\nA", False))
            out.append((f" {self.values[q]}", True))
            lead = "\n"
        out.append(("\n", False))
        return out

    @property
    def text(self) -> str:
        return "".join(piece for piece, _ in self.chunks())

    @property
    def prompt(self) -> str:
        """What evaluation feeds the model: the pairs, the query line and "A"."""
        return self.chunks()[0][0]

    def row(self) -> dict:
        q = self.queries[0]
        return {
            "text": self.text,
            "prompt": self.prompt,
            "num_pairs": self.num_pairs,
            "query_index": q,
            "query_position": position(q, self.num_pairs),
            "key": self.keys[q],
            "value": self.values[q],
            "num_queries": len(self.queries),
            "query_indices": list(self.queries),
            "context_hash": context_hash(self.context),
        }


def position(q: int, n: int) -> float:
    """Relative key position: 0 = first pair, 1 = last pair."""
    return q / (n - 1) if n > 1 else 0.0


def context_hash(context: str) -> str:
    """Identity of a sample's pairs (ordered): equal hashes = the same context."""
    return hashlib.sha1(context.encode()).hexdigest()[:16]


def pair_probs(split: SplitSpec) -> tuple[np.ndarray, np.ndarray]:
    ns = np.arange(split.min_pairs, split.max_pairs + 1)
    w = ns.astype(float) if split.pairs_weighting == "linear" else np.ones(len(ns))
    return ns, w / w.sum()


def draw_samples(
    rng: np.random.Generator,
    split: SplitSpec,
    words: list[str],
    count: int,
    exclude: set[str] | None = None,
) -> tuple[list[Sample], int]:
    """`count` samples from `rng`; contexts in `exclude` are redrawn. Returns (samples, redrawn)."""
    pool = np.asarray(words, dtype=object)
    ns, probs = pair_probs(split)
    lo, hi = split.query_position
    valid = {int(n): np.asarray(valid_query_indices(int(n), lo, hi)) for n in ns}
    out: list[Sample] = []
    redrawn = 0
    while len(out) < count:
        n = int(rng.choice(ns, p=probs))
        picked = rng.choice(len(pool), size=2 * n, replace=False)
        keys, values = pool[picked[:n]].tolist(), pool[picked[n:]].tolist()
        k = min(split.queries_per_sample, len(valid[n]))
        queries = rng.choice(valid[n], size=k, replace=False).tolist()
        sample = Sample(keys, values, [int(q) for q in queries])
        if exclude and context_hash(sample.context) in exclude:
            redrawn += 1
            if redrawn > 1000 + 100 * count:
                raise LmlabError(
                    f"{split.name}: cannot draw {count} samples whose pairs differ from every "
                    "train split's: too few possible contexts (raise words.count or min_pairs)"
                )
            continue
        out.append(sample)
    return out, redrawn


def encode_samples(tok, samples: list[Sample]) -> list[tuple[list[int], list[int]]]:
    """(ids, loss mask) per sample; the mask is 1 on answer tokens only. Pieces are encoded
    separately, so the eval prompt's ids are exactly a prefix of the training ids."""
    pieces = [s.chunks() for s in samples]
    flat = [text for chunks in pieces for text, _ in chunks]
    encoded = tok.encode_batch(flat)
    out = []
    i = 0
    for chunks in pieces:
        ids: list[int] = []
        mask: list[int] = []
        for _, is_answer in chunks:
            part = encoded[i]
            i += 1
            ids += part
            mask += [int(is_answer)] * len(part)
        out.append((ids, mask))
    return out
