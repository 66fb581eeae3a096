"""The step-level engine: a running batch that requests join and leave between steps.

    batch = engine.batch(max_rows=32)
    handle = batch.add(Request(prompt, cfg))    # validated now; prefilled at the next step
    events = batch.step()                       # decode one token for every running row, then
                                                # prefill the waiting requests (their first token)
    batch.cancel(handle)                        # its rows leave at the next step

Each row of the batch is one sample of one request, with its own state (`Row`). Waiting requests
are prefilled together (left-padded), their KV cache compressed with each request's own policy,
the prompt rows copied `num_samples` times, and the result concatenated to the running cache
(`KVCache.concat`: slot indices carry no position, so rows of different lengths right-align).
Rows that finish leave the cache, and slots no remaining row attends to are trimmed, so a batch
that never empties stays as small as the rows it holds.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from lmlab.model.engine import Event, Generation, Request, Result
from lmlab.model.kv import KVCache, row_seed
from lmlab.model.sampling import sample_next
from lmlab.text.stream import IncrementalDecoder

if TYPE_CHECKING:
    from lmlab.model.engine import Engine


class Handle:
    """A request in a running batch; `result` is complete once `done`."""

    def __init__(self, request: Request, index: int, error: str | None = None):
        self.request, self.index = request, index
        self.result = Result(request, error=error)
        self.samples: list[Generation | None] = [None] * request.cfg.num_samples
        self.added = time.perf_counter()
        self.cancelled = False

    @property
    def done(self) -> bool:
        return self.result.error is not None or all(s is not None for s in self.samples)


@dataclass
class Row:
    handle: Handle
    sample: int
    gen: torch.Generator
    prefill_s: float
    prefill_end: float
    kv_retained: list[int]
    decoder: IncrementalDecoder | None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    top: list[list[tuple[int, float]]] | None = None
    first_token_at: float | None = None
    shown: int = 0  # characters of decoder.text given out in events
    searched: int = 0  # characters of decoder.text already searched for stop strings
    cut: int | None = None  # where a stop string starts in decoder.text
    finish: str | None = None
    stop_token: int | None = None
    stop_string: str | None = None
    stop_logprob: float | None = None

    @property
    def cfg(self):
        return self.handle.request.cfg

    @functools.cached_property
    def sampling(self) -> tuple:
        """The settings that decide a draw: rows that share them are drawn together."""
        c = self.cfg
        return (c.temperature, c.top_k, c.top_p, tuple(dict.fromkeys(c.banned_tokens)))


class RunningBatch:
    def __init__(self, engine: Engine, max_rows: int | None = None, text_deltas: bool = False):
        self.engine, self.model = engine, engine.model
        self.max_rows, self.text_deltas = max_rows, text_deltas
        self.tok = engine.tokenizer
        self.pending: deque[Handle] = deque()
        self.rows: list[Row] = []
        self.cache: KVCache | None = None
        self.last: torch.Tensor | None = None  # each row's newest token, fed at the next decode
        self._count = 0

    # ---- the scheduler's API ----------------------------------------------------------------
    def add(self, request: Request, index: int | None = None) -> Handle:
        index = self._count if index is None else index
        self._count += 1
        handle = Handle(request, index, error=self.engine.check(request))
        if handle.result.error is None:
            self.pending.append(handle)
        return handle

    def cancel(self, handle: Handle) -> None:
        handle.cancelled = True

    @property
    def has_work(self) -> bool:
        return bool(self.rows or self.pending)

    @property
    def running_rows(self) -> int:
        return len(self.rows)

    def step(self) -> list[Event]:
        events: list[Event] = []
        was_training = self.model.training
        if was_training:  # Module.train() walks every submodule: not on each step of an eval model
            self.model.eval()
        try:
            with torch.inference_mode():
                for row in self.rows:
                    if row.handle.cancelled and row.finish is None:
                        self._finish(row, "cancelled", events)
                self._drop_finished()
                if self.rows:
                    logits = self.model(self.last[:, None], kv_cache=self.cache)[:, -1]
                    self.last = self._sample(logits, self.rows, events)
                    self._drop_finished()
                self._admit(events)
        finally:
            if was_training:
                self.model.train()
        return events

    # ---- decoding ---------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor, rows: list[Row], events: list[Event]) -> torch.Tensor:
        """Choose each row's next token with its own settings (rows sharing settings are drawn
        together) and record it; returns the chosen ids. Log-probabilities are of the raw model
        distribution."""
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row.sampling, []).append(i)
        if len(groups) == 1:  # the common case: one draw for the whole batch, no gather/scatter
            ((temp, top_k, top_p, banned),) = groups
            gens = [r.gen for r in rows]
            chosen = sample_next(
                logits, gens, temperature=temp, top_k=top_k, top_p=top_p, banned=banned
            )
        else:
            chosen = torch.empty(len(rows), dtype=torch.long, device=logits.device)
            for (temp, top_k, top_p, banned), idx in groups.items():
                at = torch.tensor(idx, device=logits.device)
                gens = [rows[i].gen for i in idx]
                chosen[at] = sample_next(
                    logits[at], gens, temperature=temp, top_k=top_k, top_p=top_p, banned=banned
                )
        want = [r.cfg.logprobs is not None for r in rows]
        logp = logits.float().log_softmax(dim=-1) if any(want) else None
        for i, (row, tok) in enumerate(zip(rows, chosen.tolist(), strict=True)):
            self._accept(row, tok, None if logp is None or not want[i] else logp[i], events)
        return chosen

    def _accept(self, row: Row, tok: int, logp: torch.Tensor | None, events: list[Event]):
        now = time.perf_counter()
        if row.first_token_at is None:
            row.first_token_at = now
        cfg = row.cfg
        if tok in cfg.stop_tokens:
            row.stop_token = tok
            if logp is not None:  # a policy gradient needs the log-prob of choosing to stop
                row.stop_logprob = float(logp[tok])
            self._finish(row, "stop", events, token=None)
            return
        row.tokens.append(tok)
        if logp is not None:
            row.logprobs.append(float(logp[tok]))
            if cfg.logprobs:
                vals, ids = logp.topk(cfg.logprobs)
                row.top.append(list(zip(ids.tolist(), vals.tolist(), strict=True)))
        if row.decoder is not None:
            row.decoder.push(tok)
            self._find_stop_string(row)
        if row.cut is not None:
            self._finish(row, "stop", events, token=tok)
        elif len(row.tokens) >= cfg.max_new_tokens:
            self._finish(row, "length", events, token=tok)
        else:
            events.append(self._event(row, tok, self._visible_delta(row)))

    def _find_stop_string(self, row: Row) -> None:
        """Search only the text new since the last search (and the overlap a string needs)."""
        text, stops = row.decoder.text, row.cfg.stop_strings
        start = max(0, row.searched - max((len(s) for s in stops), default=0) + 1)
        row.searched = len(text)
        hits = [(text.find(s, start), s) for s in stops]
        hits = [(i, s) for i, s in hits if i >= 0]
        if hits:
            row.cut, row.stop_string = min(hits)

    def _visible_delta(self, row: Row) -> str:
        """New text a stream may show: held back while a stop string could still be forming."""
        if not self.text_deltas or row.decoder is None:
            return ""
        hold = max((len(s) for s in row.cfg.stop_strings), default=1) - 1
        end = len(row.decoder.text) - hold
        if end <= row.shown:
            return ""
        piece = row.decoder.text[row.shown : end]
        row.shown = end
        return piece

    def _finish(self, row: Row, reason: str, events: list[Event], token: int | None = None):
        row.finish = reason
        now = time.perf_counter()
        if row.decoder is not None:
            if row.cut is None:
                row.decoder.flush()
            text = row.decoder.text if row.cut is None else row.decoder.text[: row.cut]
        else:
            text = self.tok.decode(row.tokens) if self.tok is not None else None
        piece = text[row.shown :] if self.text_deltas and text is not None else ""
        row.shown = len(text or "")
        decode_s = max(0.0, now - row.prefill_end)
        gen = Generation(
            tokens=row.tokens,
            text=text,
            finish_reason=reason,  # type: ignore[arg-type]
            prompt_tokens=len(row.handle.request.prompt),
            prefill_s=row.prefill_s,
            decode_s=decode_s,
            decode_tokens_per_s=len(row.tokens) / decode_s if decode_s > 0 else 0.0,
            kv_retained=row.kv_retained,
            stop_token=row.stop_token,
            stop_string=row.stop_string,
            ttft_s=(row.first_token_at or now) - row.handle.added,
            logprobs=row.logprobs,
            top_logprobs=row.top,
            sample_index=row.sample,
            stop_logprob=row.stop_logprob,
        )
        h = row.handle
        h.samples[row.sample] = gen
        if h.done:
            h.result.samples = list(h.samples)  # type: ignore[arg-type]
        events.append(self._event(row, token, piece, gen))

    def _event(self, row: Row, token, text: str, done: Generation | None = None) -> Event:
        h = row.handle
        lp = row.logprobs[-1] if token is not None and row.logprobs else None
        top = row.top[-1] if token is not None and row.top else None
        return Event(h.index, row.sample, token, text, done, h.request.tag, lp, top)

    def _drop_finished(self) -> None:
        keep = [i for i, r in enumerate(self.rows) if r.finish is None]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache, self.last = None, None
            return
        self.cache.select_rows(keep)
        self.cache.trim()
        self.last = self.last[torch.tensor(keep, device=self.last.device)]

    # ---- admission (prefill) ----------------------------------------------------------------
    def _take_pending(self) -> list[Handle]:
        """Waiting requests that fit under max_rows, in arrival order (the first always fits
        an empty batch)."""
        group: list[Handle] = []
        rows = len(self.rows)
        while self.pending:
            h = self.pending[0]
            if h.cancelled:
                self.pending.popleft()
                h.result.error = h.result.error or "cancelled before it started"
                continue
            n = h.request.cfg.num_samples
            if self.max_rows is not None and rows + n > self.max_rows and (rows or group):
                break
            group.append(self.pending.popleft())
            rows += n
        return group

    def _admit(self, events: list[Event]) -> None:
        """Prefill the waiting requests that fit; requests that keep a different number of
        prompt tokens out of compression (`kv_suffix`) are prefilled apart."""
        by_suffix: dict[int, list[Handle]] = {}
        for h in self._take_pending():
            by_suffix.setdefault(h.request.cfg.kv_suffix, []).append(h)
        for suffix, group in by_suffix.items():
            self._prefill(group, suffix, events)

    def _prefill(self, group: list[Handle], suffix: int, events: list[Event]) -> None:
        """Prefill `group` (left-padded), compress each row with its policy, feed the last
        `suffix` prompt tokens through the compressed cache, draw the first tokens, and join the
        survivors to the running batch."""
        engine, model = self.engine, self.model
        prompts = [list(map(int, h.request.prompt)) for h in group]
        cfgs = [h.request.cfg for h in group]
        B, T = len(group), max(len(p) for p in prompts) - suffix
        pads = [T - (len(p) - suffix) for p in prompts]
        ids = torch.tensor(
            [[0] * pad + p[: len(p) - suffix] for pad, p in zip(pads, prompts, strict=True)]
        )
        policies = [c.policy() for c in cfgs]
        windows = [p.query_window for p in policies]
        record = -1 if any(w < 0 for w in windows) else max(windows)
        full_logits = any(c.prompt_logprobs is not None for c in cfgs)
        t0 = _clock(engine.device)
        cache = KVCache(
            B,
            model.cfg.n_layer,
            T + suffix + max(c.max_new_tokens for c in cfgs),
            left_pad=pads,
            record_queries=record,
        )
        logits = model(ids.to(engine.device), kv_cache=cache, last_only=not full_logits)
        retained = cache.compress(policies, rows=[0] * B)
        if suffix:  # the question reads the compressed context, and is kept whole itself
            tail = torch.tensor([p[len(p) - suffix :] for p in prompts], device=engine.device)
            more = model(tail, kv_cache=cache, last_only=not full_logits)
            logits = torch.cat([logits, more], dim=1) if full_logits else more
            retained = cache.retained_lengths()
        t1 = _clock(engine.device)
        if full_logits:
            for b, h in enumerate(group):
                if cfgs[b].prompt_logprobs is not None:
                    _prompt_logprobs(h.result, logits[b, pads[b] :], prompts[b], cfgs[b])
        last = logits[:, -1]
        new_rows, expand = [], []
        for b, h in enumerate(group):
            cfg = h.request.cfg
            for j in range(cfg.num_samples):
                gen = torch.Generator(device=engine.device).manual_seed(row_seed(cfg.seed, j))
                wants_text = self.tok is not None and (self.text_deltas or bool(cfg.stop_strings))
                row = Row(
                    h, j, gen, t1 - t0, t1, retained[b],
                    IncrementalDecoder(self.tok) if wants_text else None,
                    logprobs=[] if cfg.logprobs is not None else None,
                    top=[] if cfg.logprobs else None,
                )  # fmt: skip
                new_rows.append(row)
                expand.append(b)
        if expand != list(range(B)):
            cache.select_rows(expand)
            last = last[torch.tensor(expand, device=last.device)]
        zero = [r for r in new_rows if r.cfg.max_new_tokens == 0]
        for row in zero:
            self._finish(row, "length", events)
        live = [i for i, r in enumerate(new_rows) if r.finish is None]
        if not live:
            return
        new_rows = [new_rows[i] for i in live]
        if len(live) < len(expand):
            cache.select_rows(live)
            last = last[torch.tensor(live, device=last.device)]
        first = self._sample(last, new_rows, events)
        survivors = [i for i, r in enumerate(new_rows) if r.finish is None]
        if not survivors:
            return
        if len(survivors) < len(new_rows):
            cache.select_rows(survivors)
        new_rows = [new_rows[i] for i in survivors]
        first = first[torch.tensor(survivors, device=first.device)]
        if self.rows:
            room = max(r.cfg.max_new_tokens - len(r.tokens) for r in [*self.rows, *new_rows])
            self.cache = KVCache.concat([self.cache, cache], room=room)
            self.last = torch.cat([self.last, first.to(self.last.device)])
        else:
            self.cache, self.last = cache, first.to(engine.device)
        self.rows.extend(new_rows)


def _prompt_logprobs(result: Result, logits: torch.Tensor, prompt: list[int], cfg) -> None:
    """log p(prompt[t] | prompt[:t]) for t >= 1 from the prefill logits of the row's real tokens
    (logits [n, V] at positions 0..n-1); the first token has none."""
    logp = logits[:-1].float().log_softmax(dim=-1)
    target = torch.tensor(prompt[1:], device=logp.device)
    picked = logp.gather(1, target[:, None]).squeeze(1).tolist()
    result.prompt_logprobs = [None, *picked]
    if cfg.prompt_logprobs:
        vals, ids = logp.topk(cfg.prompt_logprobs, dim=-1)
        tops = [
            list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), vals.tolist(), strict=True)
        ]
        result.prompt_top_logprobs = [None, *tops]


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
