"""KV compression policies: which prompt positions a budget keeps.

A policy runs once, right after the prefill, on one row at a time. With budget b in (0, 1] and a
prompt of n real tokens it keeps k = ceil(b * n) positions per KV head (at least 1), in their
original order. `select(keys, queries, row)` gets that row's
  keys    [n_layer, n_kv_head, n, head_dim]  rotated keys of the real prompt tokens, and
  queries [n_layer, n_head,    w, head_dim]  the rotated queries of the last w prompt tokens that
                                             the cache recorded for it (`query_window`: 0 none,
                                             W the last W, -1 all),
and returns kept indices [n_layer, n_kv_head, k] into 0..n-1, sorted ascending.

Attention scores are recomputed here from the recorded queries (softmax(q k^T / sqrt(d)) with the
causal mask, the same as the model's SDPA) rather than captured inside the attention kernel, so
the model keeps using fused SDPA. H2O needs every query, i.e. a T x T matrix per head; it is built
in blocks of queries, which is cheap for the small models and T <= 4096 this lab uses.

  full          keeps everything; the budget is validated but ignored.
  snapkv        observation window = last W tokens (W clipped to n). Earlier positions are scored by
                the attention the window's queries give them (averaged over window queries and over
                the query heads of the KV head's group), smoothed by 1D pooling (kernel K, avg or
                max); per KV head the top (k - W) of them plus the whole window are kept. When
                k <= W only the last k positions are kept.
  streamingllm  attention sinks: the first s = min(S, k) positions plus the most recent k - s.
  h2o           heavy hitters: recent r = k // 2 positions, plus the k - r earlier positions with
                the largest accumulated attention (column sums of the causal attention matrix over
                every prompt query, averaged over the group's query heads), per KV head.
  random        k uniformly random positions per layer (shared by the KV heads), from a generator
                seeded by (seed, row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmlab.errors import LmlabError

KV_POLICIES = ("full", "snapkv", "streamingllm", "h2o", "random")
_SCORE_BLOCK = 256  # queries per block when building attention probabilities


def kept_length(budget: float, n: int) -> int:
    """ceil(budget * n), clamped to [1, n]; rounding first so 0.3 * 10 keeps 3, not 4."""
    return max(1, min(n, math.ceil(round(budget * n, 9))))


def row_seed(seed: int, row: int) -> int:
    """Seed of row `row` of a batch: each row draws from its own stream."""
    return (seed * 1_000_003 + row) % (2**63 - 1)


@dataclass
class KVPolicy:
    """Base policy: keeps every position (this is `full`)."""

    budget: float = 1.0
    name = "full"
    query_window = 0

    def kept_length(self, n: int) -> int:
        return n

    def select(self, keys: torch.Tensor, queries: torch.Tensor, row: int) -> torch.Tensor:
        n_layer, n_kv, n, _ = keys.shape
        return _expand(torch.arange(n, device=keys.device), n_layer, n_kv)


@dataclass
class StreamingLLMPolicy(KVPolicy):
    sinks: int = 4
    name = "streamingllm"

    def kept_length(self, n: int) -> int:
        return kept_length(self.budget, n)

    def select(self, keys, queries, row):
        n_layer, n_kv, n, _ = keys.shape
        k = self.kept_length(n)
        s = min(self.sinks, k)
        idx = torch.cat([torch.arange(s), torch.arange(n - (k - s), n)]).to(keys.device)
        return _expand(idx, n_layer, n_kv)


@dataclass
class SnapKVPolicy(KVPolicy):
    window: int = 32
    kernel: int = 7
    pooling: str = "avg"
    name = "snapkv"

    @property
    def query_window(self) -> int:  # type: ignore[override]
        return self.window

    def kept_length(self, n: int) -> int:
        return kept_length(self.budget, n)

    def select(self, keys, queries, row):
        n_layer, n_kv, n, _ = keys.shape
        k = self.kept_length(n)
        w = min(self.window, n, queries.shape[2])
        if k <= w:
            return _expand(torch.arange(n - k, n, device=keys.device), n_layer, n_kv)
        scores = attention_scores(queries[:, :, -w:], keys)[..., : n - w]  # [L, Hkv, n - w]
        scores = _pool(scores, self.kernel, self.pooling)
        heavy = scores.topk(k - w, dim=-1).indices
        window = _expand(torch.arange(n - w, n, device=keys.device), n_layer, n_kv)
        return torch.cat([heavy, window], dim=-1).sort(dim=-1).values


@dataclass
class H2OPolicy(KVPolicy):
    name = "h2o"
    query_window = -1

    def kept_length(self, n: int) -> int:
        return kept_length(self.budget, n)

    def select(self, keys, queries, row):
        n_layer, n_kv, n, _ = keys.shape
        k = self.kept_length(n)
        recent = k // 2
        scores = attention_scores(queries[:, :, -n:], keys, reduce="sum")[..., : n - recent]
        heavy = scores.topk(k - recent, dim=-1).indices
        tail = _expand(torch.arange(n - recent, n, device=keys.device), n_layer, n_kv)
        return torch.cat([heavy, tail], dim=-1).sort(dim=-1).values


@dataclass
class RandomPolicy(KVPolicy):
    seed: int = 0
    name = "random"

    def kept_length(self, n: int) -> int:
        return kept_length(self.budget, n)

    def select(self, keys, queries, row):
        n_layer, n_kv, n, _ = keys.shape
        k = self.kept_length(n)
        gen = torch.Generator().manual_seed(row_seed(self.seed, row))
        per_layer = [torch.randperm(n, generator=gen)[:k].sort().values for _ in range(n_layer)]
        idx = torch.stack(per_layer).to(keys.device)  # [L, k]
        return idx[:, None, :].expand(n_layer, n_kv, k)


def make_policy(
    name: str,
    budget: float = 1.0,
    *,
    window: int = 32,
    kernel: int = 7,
    sinks: int = 4,
    pooling: str = "avg",
    seed: int = 0,
) -> KVPolicy:
    """Build a policy by name, validating the budget and options."""
    if name not in KV_POLICIES:
        raise LmlabError(f"unknown KV policy {name!r} (choose from {', '.join(KV_POLICIES)})")
    if not isinstance(budget, int | float) or not 0.0 < budget <= 1.0:
        raise LmlabError(f"KV budget {budget!r} is outside (0, 1]")
    if window < 1 or kernel < 1 or sinks < 0:
        raise LmlabError(
            f"KV options need window >= 1, kernel >= 1, sinks >= 0 "
            f"(got window={window}, kernel={kernel}, sinks={sinks})"
        )
    if pooling not in ("avg", "max"):
        raise LmlabError(f"unknown KV pooling {pooling!r} (choose from avg, max)")
    budget = float(budget)
    if name == "full":
        return KVPolicy(budget)
    if name == "snapkv":
        return SnapKVPolicy(budget, window=window, kernel=kernel, pooling=pooling)
    if name == "streamingllm":
        return StreamingLLMPolicy(budget, sinks=sinks)
    if name == "h2o":
        return H2OPolicy(budget)
    return RandomPolicy(budget, seed=seed)


def attention_scores(
    queries: torch.Tensor, keys: torch.Tensor, reduce: str = "mean"
) -> torch.Tensor:
    """Attention that the last w positions' queries [L, H, w, D] give to each of n keys
    [L, Hkv, n, D] (causal: query i sits at position n - w + i), reduced over queries ("mean" or
    "sum") and averaged over each KV head's group of query heads -> [L, Hkv, n], float32."""
    n_layer, n_head, w, d = queries.shape
    n_kv, n = keys.shape[1], keys.shape[2]
    group = n_head // n_kv
    key_pos = torch.arange(n, device=keys.device)
    total = torch.zeros(n_layer, n_head, n, device=keys.device)
    for layer in range(n_layer):  # one layer and one block of queries at a time: bounded memory
        k = keys[layer].float().repeat_interleave(group, dim=0)  # [H, n, D]
        for start in range(0, w, _SCORE_BLOCK):
            q = queries[layer, :, start : start + _SCORE_BLOCK].float()
            q_pos = n - w + start + torch.arange(q.shape[1], device=keys.device)
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(d)  # [H, c, n]
            logits.masked_fill_(key_pos[None, :] > q_pos[:, None], float("-inf"))
            total[layer] += logits.softmax(dim=-1).sum(dim=1)
    if reduce == "mean":
        total /= w
    return total.view(n_layer, n_kv, group, n).mean(dim=2)


def _pool(scores: torch.Tensor, kernel: int, pooling: str) -> torch.Tensor:
    if kernel <= 1:
        return scores
    shape, n = scores.shape, scores.shape[-1]
    x = scores.reshape(-1, 1, n)
    pad = kernel // 2
    if pooling == "max":
        x = F.max_pool1d(x, kernel, stride=1, padding=pad)
    else:
        x = F.avg_pool1d(x, kernel, stride=1, padding=pad)
    return x[..., :n].reshape(shape)


def _expand(idx: torch.Tensor, n_layer: int, n_kv: int) -> torch.Tensor:
    return idx[None, None, :].expand(n_layer, n_kv, idx.numel())
