"""Pairs -> token rows for a reward model, the split by prefix, and the batch source.

A pair becomes two rows, prefix+chosen and prefix+rejected, each
`render_for_completion(prefix)` (ending with `<|assistant|>`) + response ids + `<|eot|>`; the
reward is read at the last token of each row. A response longer than half the context is cut
(its `<|eot|>` then falls off); older turns of the prefix are dropped to fit, and a pair whose last
user message alone does not fit is skipped and counted.

Validation is split *by prefix id* (a stable hash of it), so no prompt is on both sides.

`PairBatches` is the trainer's batch source, with exact resume (its state is two integers):
    shuffle   every pair once per epoch, in a seeded order (the uniform baseline; with
              `weighting: loss` each pair also carries its mean-1 density weight)
    weighted  pairs drawn with replacement, probability proportional to their prefix's density
              weight (the seed's WeightedRandomSampler), a seeded draw per step
Under DDP every rank draws the same global batch and keeps its own slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.data.sources import stable_fraction
from lmlab.errors import LmlabError
from lmlab.text.base import Tokenizer
from lmlab.text.chat import render_for_completion


@dataclass
class PairItem:
    chosen: list[int]
    rejected: list[int]
    prefix_id: str
    sample_weight: float = 1.0  # relative draw probability (weighted sampling)
    loss_weight: float = 1.0  # multiplies the pair's loss (mean 1 over the data)
    density: float | None = None
    margin: float = 0.0
    prompt_len: int = 0  # tokens before the response (DPO scores only what follows)
    ref_chosen: float = 0.0  # reference-model log-probabilities of the responses (DPO)
    ref_rejected: float = 0.0


def response_ids(tok: Tokenizer, text: str, cap: int) -> list[int]:
    return [*tok.encode(text), tok.eot_id][:cap]


def tokenize_pair(tok: Tokenizer, pair: dict, seq_len: int) -> tuple[list[int], list[int], int]:
    """(prefix+chosen, prefix+rejected, prefix length) ids, each at most seq_len long
    (LmlabError if the last user message alone does not fit)."""
    cap = max(seq_len // 2, 1)
    chosen = response_ids(tok, pair["chosen"], cap)
    rejected = response_ids(tok, pair["rejected"], cap)
    prompt = render_for_completion(
        tok, pair["prefix"]["messages"], max_tokens=seq_len - max(len(chosen), len(rejected))
    )
    return prompt + chosen, prompt + rejected, len(prompt)


def build_items(
    tok: Tokenizer,
    pairs: list[dict],
    seq_len: int,
    weights: dict[str, dict] | None = None,
    margin_from_pairs: bool = False,
) -> tuple[list[PairItem], int]:
    """(items, pairs skipped because they do not fit). With `weights` (prefix id -> weight record
    from embed.load_weights) every pair must have one: a missing id is an error."""
    items, skipped = [], 0
    for p in pairs:
        w = None
        if weights is not None:
            w = weights.get(p["prefix_id"])
            if w is None:
                raise LmlabError(
                    f"pair {p['id']}: its prefix {p['prefix_id']} has no density weight "
                    "(the embeddings were computed for other prefixes: rerun `lmlab prefs "
                    "prefixes` and `lmlab prefs embed` on this pairs file)"
                )
        try:
            c, r, n_prompt = tokenize_pair(tok, p, seq_len)
        except LmlabError:
            skipped += 1
            continue
        items.append(
            PairItem(
                c,
                r,
                p["prefix_id"],
                sample_weight=w["weight"] if w else 1.0,
                loss_weight=w["loss_weight"] if w else 1.0,
                density=w["density"] if w else None,
                margin=float(p.get("margin", 0.0)) if margin_from_pairs else 0.0,
                prompt_len=n_prompt,
            )
        )
    return items, skipped


def split_by_prefix(pairs: list[dict], val_frac: float, seed: int = 0) -> tuple[list, list]:
    """(train, val): a prefix id is in val when its stable hash falls below val_frac."""
    val_ids = {p["prefix_id"] for p in pairs if stable_fraction(p["prefix_id"], seed) < val_frac}
    train = [p for p in pairs if p["prefix_id"] not in val_ids]
    val = [p for p in pairs if p["prefix_id"] in val_ids]
    return train, val


def collate(items: list[PairItem], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """ids [2B, T] (chosen rows, then rejected rows), last [2B], targets [2B, T] (the next token
    where it is a response token, else -1), ref [2B] (reference log-probs), loss_weight [B],
    margin [B]."""
    rows = [it.chosen for it in items] + [it.rejected for it in items]
    starts = [it.prompt_len for it in items] * 2
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)  # right padding: causal, unseen
        if starts[i]:  # position t predicts token t+1: the response tokens r[start:]
            targets[i, starts[i] - 1 : len(r) - 1] = torch.tensor(r[starts[i] :], dtype=torch.long)
    return {
        "ids": ids,
        "last": torch.tensor([len(r) - 1 for r in rows], dtype=torch.long),
        "targets": targets,
        "ref": torch.tensor(
            [it.ref_chosen for it in items] + [it.ref_rejected for it in items], dtype=torch.float32
        ),
        "loss_weight": torch.tensor([it.loss_weight for it in items], dtype=torch.float32),
        "margin": torch.tensor([it.margin for it in items], dtype=torch.float32),
    }


class PairBatches:
    """The trainer's batch source over PairItems (see the module docstring)."""

    def __init__(
        self,
        items: list[PairItem],
        batch_size: int,
        sampling: str = "shuffle",
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        if not items:
            raise LmlabError("no training pairs (all were held out for validation, or skipped)")
        if sampling not in ("shuffle", "weighted"):
            raise LmlabError(f"unknown sampling {sampling!r} (expected shuffle or weighted)")
        self.items, self.batch_size, self.sampling = items, batch_size, sampling
        self.seed, self.rank, self.world = seed, rank, world
        self.probs = torch.tensor([it.sample_weight for it in items], dtype=torch.float64)
        if sampling == "weighted" and not bool((self.probs > 0).any()):
            raise LmlabError("every pair has density weight 0: nothing to sample")
        self.epoch, self.pos, self.draws = 0, 0, 0
        self._order = self._permutation()

    def _gen(self, *salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.seed, *salt)) % (2**63))

    def _permutation(self) -> list[int]:
        return torch.randperm(len(self.items), generator=self._gen(0, self.epoch)).tolist()

    def _global_indices(self) -> list[int]:
        n = self.batch_size * self.world
        if self.sampling == "weighted":
            gen = self._gen(1, self.draws)
            self.draws += 1
            return torch.multinomial(self.probs, n, replacement=True, generator=gen).tolist()
        out: list[int] = []
        while len(out) < n:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation()
            take = self._order[self.pos : self.pos + n - len(out)]
            out += take
            self.pos += len(take)
        return out

    def next_batch(self) -> dict[str, torch.Tensor]:
        idx = self._global_indices()
        mine = idx[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return collate([self.items[i] for i in mine])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self.draws = state["epoch"], state["pos"], state["draws"]
        self._order = self._permutation()
