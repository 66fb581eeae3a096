"""KV cache: an object the model writes into, rows of different lengths, one-shot compression.

Layout (allocated at the first write, dtype/device of the keys):
  k, v    [n_layer, B, n_kv_head, capacity, head_dim]   keys already rotary-rotated
  valid   [n_layer, B, capacity] bool                    slots a query may attend to
  pos     int                                            slots written so far (same for all rows)
  seen    list[int] per row                              real tokens seen = rotary position of the
                                                         row's next token (independent of what
                                                         the cache still retains)
Rows are written in lockstep. Prompts are LEFT-padded: `left_pad[b]` slots at the start of the
first chunk are padding, marked invalid, so no real query ever attends to them. Each query may
always attend to itself, which keeps padded queries finite (they are never read).

`compress(policy)` runs once after the prefill: per row it gathers the kept positions of each KV
head (in their original order) to the front of a new, smaller cache and marks the rest invalid.
Every policy goes through the same gather, so a policy that keeps everything (budget 1.0) leaves a
cache identical to `full`. `retained_lengths()` reports [row][layer] valid slot counts.

A model with short convolutions also keeps, per layer, the last K-1 convolution inputs of each row
(`conv_window`): recurrent state that compression does not touch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmlab.errors import LmlabError
from lmlab.model.kv_policies import (
    KV_POLICIES,
    KVPolicy,
    attention_scores,
    kept_length,
    make_policy,
    row_seed,
)

__all__ = [
    "KV_POLICIES",
    "KVCache",
    "KVPolicy",
    "attention_scores",
    "kept_length",
    "make_policy",
    "row_seed",
]


class KVCache:
    def __init__(
        self,
        batch_size: int,
        n_layer: int,
        capacity: int,
        *,
        left_pad: Sequence[int] | None = None,
        record_queries: int = 0,
    ):
        """record_queries: rotated queries of the prefill kept for a policy (0 none, W the last W,
        -1 all)."""
        self.batch_size, self.n_layer, self.capacity = batch_size, n_layer, capacity
        self.left_pad = list(left_pad) if left_pad is not None else [0] * batch_size
        if len(self.left_pad) != batch_size:
            raise ValueError(f"left_pad has {len(self.left_pad)} rows, batch has {batch_size}")
        self.seen = [0] * batch_size
        self.pos = 0
        self.record_queries = record_queries
        self.prefill_len: int | None = None
        self.compressed = False
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None
        self.queries: torch.Tensor | None = None  # [n_layer, B, n_head, W, head_dim]
        self.conv_state: dict[int, torch.Tensor] = {}  # layer -> [B, K-1, d]
        # per-step state shared by the layers (see _begin_step); _dense: no invalid slot so far
        self._step_start: tuple[int, int] | None = None
        self._step_mask: object = None  # None: no mask; True: the valid slots; (causal, itself)
        self._dense: bool | None = None

    # ---- what the model asks before and after a forward -----------------------------------------
    def max_position(self, T: int) -> int:
        return max(s + T - 1 - p for s, p in zip(self.seen, self.left_pad, strict=True))

    def positions(self, T: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Rotary positions [B, T] of the next chunk (padding slots get 0)."""
        start = torch.tensor(
            [s - p for s, p in zip(self.seen, self.left_pad, strict=True)], device=device
        )
        return (start[:, None] + torch.arange(T, device=device)[None, :]).clamp_(min=0)

    def update(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write a chunk's k, v [B, Hkv, T, D] for `layer`; return every key and value so far and
        the boolean attention mask [B, 1, T, pos + T] for the chunk's queries q [B, H, T, D]
        (None for an unpadded first chunk, which is exactly causal)."""
        B, n_kv, T, D = k.shape
        if self.k is None:
            shape = (self.n_layer, B, n_kv, self.capacity, D)
            self.k = torch.zeros(shape, dtype=k.dtype, device=k.device)
            self.v = torch.zeros(shape, dtype=v.dtype, device=v.device)
            self.valid = torch.zeros(
                self.n_layer, B, self.capacity, dtype=torch.bool, device=k.device
            )
        start, end = self.pos, self.pos + T
        if end > self.capacity:
            raise LmlabError(f"KV cache full: {end} slots needed, capacity {self.capacity}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        if self._step_start != (start, T):  # the first layer of a step: what all layers share
            self._begin_step(start, T, k.device)
        if self.prefill_len is None and self.record_queries:
            self._record(layer, q)
        keys, values = self.k[layer, :, :, :end], self.v[layer, :, :, :end]
        if self._step_mask is None:  # causal first chunk, or one query that sees every slot
            return keys, values, None
        if self._step_mask is True:  # one query per row: the row's valid slots
            return keys, values, self.valid[layer, :, None, None, :end]
        causal, itself = self._step_mask
        return keys, values, ((self.valid[layer, :, None, :end] & causal) | itself)[:, None]

    def _begin_step(self, start: int, T: int, device) -> None:
        """Once per forward, not per layer: mark the new slots valid in every layer (not the left
        padding) and build the part of the attention mask that all layers share."""
        end = start + T
        self._step_start = (start, T)
        padded = any(self.left_pad)
        if padded:
            pad = torch.tensor(self.left_pad, device=device)
            self.valid[:, :, start:end] = torch.arange(T, device=device)[None, :] >= pad[:, None]
            self._dense = None
        else:
            self.valid[:, :, start:end] = True
        if start == 0 and not padded:
            # an unpadded first chunk is exactly causal: SDPA's causal kernel skips the upper
            # triangle and no mask is built (1.5x faster prefill at T=2048 on CPU)
            self._dense, self._step_mask = True, None
        elif T == 1 and not padded:
            # a decode step: its query is the newest slot, causal over all the others
            if self._dense is None:
                self._dense = bool(self.valid[:, :, :start].all())
            self._step_mask = None if self._dense else True
        else:
            key_pos = torch.arange(end, device=device)
            query_pos = torch.arange(start, end, device=device)
            causal = key_pos[None, :] <= query_pos[:, None]  # [T, end]
            itself = key_pos[None, :] == query_pos[:, None]
            self._step_mask = (causal, itself)

    def _slots_changed(self) -> None:
        """Slots moved or rows left: the next step rebuilds its shared state."""
        self._step_start, self._dense = None, None

    def conv_window(self, layer: int, x: torch.Tensor, kernel: int) -> torch.Tensor:
        """A chunk's convolution input x [B, T, d] -> [B, kernel-1+T, d]: the row's previous
        kernel-1 inputs (zeros before its first token; padding slots count as zeros), then x.
        Remembers the last kernel-1 for the next chunk."""
        B, T, _ = x.shape
        if self.pos == 0 and any(self.left_pad):
            pad = torch.tensor(self.left_pad, device=x.device)
            x = x * (torch.arange(T, device=x.device)[None, :] >= pad[:, None])[..., None]
        past = self.conv_state.get(layer)
        if past is None:
            past = x.new_zeros(B, kernel - 1, x.shape[2])
        window = torch.cat([past, x], dim=1)
        self.conv_state[layer] = window[:, window.shape[1] - (kernel - 1) :]
        return window

    def advance(self, T: int) -> None:
        self.seen = [s + T - p for s, p in zip(self.seen, self.left_pad, strict=True)]
        self.left_pad = [0] * self.batch_size
        if self.prefill_len is None:
            self.prefill_len = T
        self.pos += T

    def _record(self, layer: int, q: torch.Tensor) -> None:
        T = q.shape[2]
        w = T if self.record_queries < 0 else min(self.record_queries, T)
        if self.queries is None:
            B, H, _, D = q.shape
            self.queries = torch.zeros(self.n_layer, B, H, w, D, dtype=q.dtype, device=q.device)
        self.queries[layer] = q[:, :, T - w :]

    # ---- compression and batch bookkeeping ------------------------------------------------------
    def compress(
        self, policy: KVPolicy | Sequence[KVPolicy], rows: Sequence[int] | None = None
    ) -> list[list[int]]:
        """Apply `policy` (one for the batch, or one per row) to each row's prompt; returns
        retained_lengths(). `rows[b]` is the row number a policy sees (its random stream);
        default b. The engine passes 0 for every request so a request's selection never depends
        on where it sits in a batch."""
        if self.k is None or self.prefill_len is None or self.pos != self.prefill_len:
            raise LmlabError("KV compression runs once, right after a single prefill chunk")
        if self.compressed:
            raise LmlabError("KV cache was already compressed")
        policies = [policy] * self.batch_size if isinstance(policy, KVPolicy) else list(policy)
        if len(policies) != self.batch_size:
            raise ValueError(f"{len(policies)} policies for a batch of {self.batch_size}")
        rows = list(range(self.batch_size)) if rows is None else list(rows)
        have = 0 if self.queries is None else self.queries.shape[3]
        for p in policies:
            need = self.prefill_len if p.query_window < 0 else min(p.query_window, self.pos)
            if have < need:
                raise LmlabError(
                    f"KV policy {p.name!r} needs the last {need} prefill queries, the cache "
                    f"recorded {have} (create the KVCache with record_queries=policy.query_window)"
                )
        n_layer, B, n_kv, _, D = self.k.shape
        keep = [p.kept_length(n) for p, n in zip(policies, self.seen, strict=True)]
        if keep == self.seen:  # every policy keeps everything (full, or budget 1.0): no copy
            self.queries, self.compressed = None, True
            return self.retained_lengths()
        length = max(keep) + (self.capacity - self.pos)
        k_new = self.k.new_zeros(n_layer, B, n_kv, length, D)
        v_new = self.v.new_zeros(n_layer, B, n_kv, length, D)
        valid = torch.zeros(n_layer, B, length, dtype=torch.bool, device=self.k.device)
        for b, n in enumerate(self.seen):
            first = self.pos - n  # real prompt tokens occupy slots first..pos-1
            keys, values = self.k[:, b, :, first : self.pos], self.v[:, b, :, first : self.pos]
            if self.queries is None:  # the policy needs none
                queries = keys.new_zeros(n_layer, 0, 0, D)
            else:  # the recorded window's real (non-padding) queries
                queries = self.queries[:, b, :, max(0, self.queries.shape[3] - n) :]
            idx = policies[b].select(keys, queries, rows[b])  # [L, Hkv, k]
            if idx.shape[-1] != keep[b]:
                raise RuntimeError(
                    f"policy {policies[b].name} kept {idx.shape[-1]}, expected {keep[b]}"
                )
            gather = idx[..., None].expand(-1, -1, -1, D)
            k_new[:, b, :, : keep[b]] = keys.gather(2, gather)
            v_new[:, b, :, : keep[b]] = values.gather(2, gather)
            valid[:, b, : keep[b]] = True
        self.k, self.v, self.valid = k_new, v_new, valid
        self.capacity, self.pos = length, max(keep)
        self._slots_changed()
        self.queries, self.compressed = None, True
        return self.retained_lengths()

    def retained_lengths(self) -> list[list[int]]:
        """Valid (attendable) slots per row and layer: result[row][layer]."""
        if self.valid is None:
            return [[0] * self.n_layer for _ in range(self.batch_size)]
        counts = self.valid[:, :, : self.pos].sum(dim=-1)  # [L, B]
        return counts.T.tolist()

    def select_rows(self, rows: Sequence[int]) -> None:
        """Keep only these rows (e.g. drop finished ones from a batched decode)."""
        rows = list(rows)
        if self.k is not None:
            idx = torch.tensor(rows, device=self.k.device)
            self.k, self.v = self.k[:, idx], self.v[:, idx]
            self.valid = self.valid[:, idx]
            self._slots_changed()
            if self.queries is not None:
                self.queries = self.queries[:, idx]
        for layer, state in self.conv_state.items():
            self.conv_state[layer] = state[torch.tensor(rows, device=state.device)]
        self.seen = [self.seen[r] for r in rows]
        self.left_pad = [self.left_pad[r] for r in rows]
        self.batch_size = len(rows)

    def trim(self) -> None:
        """Drop the leading slots that no row attends to any more (after rows left the batch),
        so a batch that keeps running never grows past what its rows hold."""
        if self.valid is None or self.pos == 0:
            return
        used = self.valid[:, :, : self.pos].any(dim=0).any(dim=0)  # [pos]
        if not bool(used.any()):
            return
        first = int(used.nonzero()[0])
        if first == 0:
            return
        self.k, self.v = self.k[:, :, :, first:], self.v[:, :, :, first:]
        self.valid = self.valid[:, :, first:]
        self.pos -= first
        self._slots_changed()
        self.capacity -= first

    @classmethod
    def concat(cls, caches: Sequence[KVCache], room: int) -> KVCache:
        """One cache holding every row of `caches` (each past its prefill), with `room` free slots
        after the longest. Rows are right-aligned: slot indices carry no position (keys are
        already rotated and `seen` holds each row's position), so a shorter cache's rows get
        invalid slots in front."""
        caches = [c for c in caches if c.batch_size]
        if not caches:
            raise ValueError("nothing to concatenate")
        if any(c.k is None or c.prefill_len is None for c in caches):
            raise ValueError("only caches past their prefill can be concatenated")
        first = caches[0]
        pos = max(c.pos for c in caches)
        n_layer, _, n_kv, _, D = first.k.shape
        B = sum(c.batch_size for c in caches)
        out = cls(B, first.n_layer, pos + room)
        out.k = first.k.new_zeros(n_layer, B, n_kv, pos + room, D)
        out.v = first.v.new_zeros(n_layer, B, n_kv, pos + room, D)
        out.valid = torch.zeros(n_layer, B, pos + room, dtype=torch.bool, device=first.k.device)
        b = 0
        for c in caches:
            rows = slice(b, b + c.batch_size)
            shift = pos - c.pos
            out.k[:, rows, :, shift:pos] = c.k[:, :, :, : c.pos]
            out.v[:, rows, :, shift:pos] = c.v[:, :, :, : c.pos]
            out.valid[:, rows, shift:pos] = c.valid[:, :, : c.pos]
            b += c.batch_size
        for layer in first.conv_state:
            out.conv_state[layer] = torch.cat([c.conv_state[layer] for c in caches])
        out.seen = [s for c in caches for s in c.seen]
        out.pos, out.prefill_len, out.compressed = pos, pos, True
        return out
