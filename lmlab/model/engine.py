"""The one generation engine, request by request: chat, evaluation, GRPO sampling, the KV bench and
the server all use it.

A `Request` is a prompt (token ids) with its own `GenerationConfig`: sampling settings, seed,
stops, banned tokens, KV policy and budget, `num_samples` and log-probabilities. Requests with
different settings share one batch. The work is done by a `RunningBatch` (`batch.py`), whose
step-level API a scheduler drives directly (continuous batching: requests join at a step
boundary, finished or cancelled rows leave); `run`, `generate` and `stream` are thin loops over it.

Every request is validated on its own: an invalid one gets `Result.error` and the others still
run. A request's output never depends on the rest of the batch: padding is masked, rotary
positions are per row, sample j of a request draws from a generator seeded by (seed, j), and a
request's KV policy sees row 0. Greedy outputs of a mixed batch equal each request run alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from lmlab.errors import LmlabError
from lmlab.model.kv import KVPolicy, make_policy, row_seed
from lmlab.model.registry import unwrap

MAX_TOP_LOGPROBS = 20  # OpenAI's cap on top_logprobs


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0
    stop_tokens: Sequence[int] = ()  # generation ends at any of these; it is not returned
    banned_tokens: Sequence[int] = ()  # never generated
    stop_strings: Sequence[str] = ()  # generation ends when the text contains one; it is cut off
    kv_policy: str = "full"  # one of KV_POLICIES
    kv_budget: float = 1.0  # fraction of each prompt's KV positions kept, in (0, 1]
    kv_window: int = 32  # snapkv observation window
    kv_kernel: int = 7  # snapkv pooling kernel
    kv_pooling: str = "avg"  # snapkv pooling: avg or max
    kv_sinks: int = 4  # streamingllm attention sinks
    kv_suffix: int = 0  # the last N prompt tokens (the question) are prefilled after compression
    num_samples: int = 1  # samples from one prefill (the cache rows are copied)
    logprobs: int | None = None  # None: off; 0: each generated token's; N: also the top N
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (the first has none)

    def policy(self) -> KVPolicy:
        return make_policy(
            self.kv_policy,
            self.kv_budget,
            window=self.kv_window,
            kernel=self.kv_kernel,
            sinks=self.kv_sinks,
            pooling=self.kv_pooling,
            seed=self.seed,
        )


@dataclass
class Request:
    prompt: Sequence[int]
    cfg: GenerationConfig = field(default_factory=GenerationConfig)
    tag: Any = None  # the caller's label, carried to the Result and every Event


@dataclass
class Generation:
    """One sample of one request."""

    tokens: list[int]  # generated ids, without the stop token
    text: str | None  # decoded tokens (cut before a stop string) when the engine has a tokenizer
    finish_reason: Literal["stop", "length", "cancelled"]
    prompt_tokens: int
    prefill_s: float  # the prefill (and KV compression) of the group this request joined with
    decode_s: float  # from the end of that prefill until this sample finished
    decode_tokens_per_s: float
    kv_retained: list[int] = field(default_factory=list)  # prompt KV slots kept, per layer
    stop_token: int | None = None
    stop_string: str | None = None
    ttft_s: float = 0.0  # from the request's arrival in the batch to its first token
    logprobs: list[float] | None = None  # log p of each generated token (raw model distribution)
    top_logprobs: list[list[tuple[int, float]]] | None = None
    sample_index: int = 0
    stop_logprob: float | None = None  # log p of the stop token that ended it (logprobs on)


@dataclass
class Result:
    request: Request
    samples: list[Generation] = field(default_factory=list)
    error: str | None = None
    prompt_logprobs: list[float | None] | None = None  # None for the first prompt token
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Event:
    """What one step produced for one sample: a token (None when a stop token ended it), the text
    it completes (held back while a character or a possible stop string is unfinished), and the
    finished Generation on the sample's last event."""

    index: int  # the request's index (its position in `run`/`stream`, or as given to `add`)
    sample: int
    token: int | None
    text: str = ""
    done: Generation | None = None
    tag: Any = None
    logprob: float | None = None  # the token's log-probability, when the request asked for them
    top_logprobs: list[tuple[int, float]] | None = None


def check_request(request: Request, model_cfg: Any, has_tokenizer: bool) -> str | None:
    """Why this request cannot run (one line), or None."""
    cfg, prompt = request.cfg, request.prompt
    vocab, context = model_cfg.vocab_size, model_cfg.seq_len
    if cfg.max_new_tokens < 0:
        return f"max_new_tokens must be >= 0, got {cfg.max_new_tokens}"
    if cfg.temperature < 0:
        return f"temperature must be >= 0, got {cfg.temperature}"
    if cfg.top_k < 0:
        return f"top_k must be >= 0 (0 = off), got {cfg.top_k}"
    if not 0.0 < cfg.top_p <= 1.0:
        return f"top_p must be in (0, 1] (1 = off), got {cfg.top_p}"
    if cfg.num_samples < 1:
        return f"num_samples must be >= 1, got {cfg.num_samples}"
    for name, n in (("logprobs", cfg.logprobs), ("prompt_logprobs", cfg.prompt_logprobs)):
        if n is not None and not 0 <= n <= MAX_TOP_LOGPROBS:
            return f"{name} must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"
    for name, ids in (("stop", cfg.stop_tokens), ("banned", cfg.banned_tokens)):
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            return f"{name} token ids {bad} are outside the vocabulary of {vocab}"
    if len(set(cfg.banned_tokens)) >= vocab:
        return "every token of the vocabulary is banned"
    if cfg.stop_strings and not has_tokenizer:
        return "stop strings need an engine with a tokenizer"
    if any(not isinstance(s, str) or not s for s in cfg.stop_strings):
        return "stop strings must be non-empty strings"
    n = len(prompt)
    if n == 0:
        return "prompt is empty"
    if not 0 <= cfg.kv_suffix < n:
        return f"kv_suffix must be in [0, {n}) for a prompt of {n} tokens, got {cfg.kv_suffix}"
    if n + cfg.max_new_tokens > context:
        over = n + cfg.max_new_tokens - context
        return (
            f"prompt of {n} tokens + {cfg.max_new_tokens} new tokens exceeds the context "
            f"of {context} by {over}"
        )
    if min(prompt) < 0 or max(prompt) >= vocab:
        return f"prompt has token ids outside the vocabulary of {vocab}"
    try:
        cfg.policy()
    except LmlabError as e:
        return str(e)
    return None


class Engine:
    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, device=None):
        self.model = unwrap(model)  # under DDP or torch.compile, generate with the plain module
        self.tokenizer = tokenizer
        self.model_cfg = self.model.cfg
        self.device = (
            torch.device(device) if device is not None else next(model.parameters()).device
        )

    def check(self, request: Request) -> str | None:
        return check_request(request, self.model_cfg, self.tokenizer is not None)

    def batch(self, max_rows: int | None = None, text_deltas: bool = False):
        """A running batch for a scheduler: add(request), step() -> events, cancel(handle).
        `max_rows` caps the sample rows decoded together; `text_deltas` makes every Event carry
        the text it completes (streaming)."""
        from lmlab.model.batch import RunningBatch

        return RunningBatch(self, max_rows=max_rows, text_deltas=text_deltas)

    def run(self, requests: Sequence[Request], max_rows: int | None = None) -> list[Result]:
        """Run every request to the end; one Result per request, in order."""
        batch = self.batch(max_rows=max_rows)
        handles = [batch.add(_as_request(r), index=i) for i, r in enumerate(requests)]
        with _eval_mode(self.model):
            while batch.has_work:
                batch.step()
        return [h.result for h in handles]

    def generate(
        self, prompts: Sequence[Sequence[int]], cfg: GenerationConfig | None = None
    ) -> list[Generation]:
        """The samples of every prompt under one config, prompt-major (num_samples each). Prompt i
        samples with seed row_seed(cfg.seed, i), so identical prompts still differ. An invalid
        prompt raises LmlabError before anything runs."""
        cfg = cfg or GenerationConfig()
        if not prompts:
            raise LmlabError("no prompts to generate from")
        requests = [
            Request([int(t) for t in p], replace(cfg, seed=row_seed(cfg.seed, i)))
            for i, p in enumerate(prompts)
        ]
        for i, r in enumerate(requests):
            err = self.check(r)
            if err:
                raise LmlabError(f"prompt {i}: {err}" if len(requests) > 1 else err)
        return [g for res in self.run(requests) for g in res.samples]

    def stream(self, requests: Sequence[Request], max_rows: int | None = None) -> Iterator[Event]:
        """Events as tokens are produced, for a whole batch of requests (text deltas included).
        An invalid request raises LmlabError here, before any work, so a stream never starts on
        a bad request (a scheduler that must keep going uses `batch()` instead)."""
        requests = [_as_request(r) for r in requests]
        for i, r in enumerate(requests):
            err = self.check(r)
            if err:
                raise LmlabError(f"request {i}: {err}" if len(requests) > 1 else err)
        batch = self.batch(max_rows=max_rows, text_deltas=True)
        for i, r in enumerate(requests):
            batch.add(r, index=i)

        def events() -> Iterator[Event]:
            with _eval_mode(self.model):
                while batch.has_work:
                    yield from batch.step()

        return events()


@contextmanager
def _eval_mode(model: torch.nn.Module):
    """Eval mode for a whole generation loop (set once, not per step), restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _as_request(r: Request | Sequence[int]) -> Request:
    return r if isinstance(r, Request) else Request([int(t) for t in r])
