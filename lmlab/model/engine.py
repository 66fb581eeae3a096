"""The one generation engine: batched prefill + decode with sampling, stops, bans and KV policies.

Chat, evaluation, GRPO sampling and the server all call `Engine.generate` (or `Engine.stream`).
One call: left-pad the prompts, run one prefill for the batch through a `KVCache`, compress the
cache once with the chosen KV policy, then decode one token per step for every unfinished row;
rows that finish are dropped from the batch. Greedy results of a batch equal those of each prompt
alone (padding is masked, rotary positions are per row). With temperature > 0, row i samples from
its own generator seeded by (seed, i).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from lmlab.errors import LmlabError
from lmlab.model.kv import KVCache, KVPolicy, make_policy, row_seed
from lmlab.model.sampling import sample_next


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0
    stop_tokens: Sequence[int] = ()  # generation ends at any of these; it is not returned
    banned_tokens: Sequence[int] = ()  # never generated
    kv_policy: str = "full"  # one of KV_POLICIES
    kv_budget: float = 1.0  # fraction of each prompt's KV positions kept, in (0, 1]
    kv_window: int = 32  # snapkv observation window
    kv_kernel: int = 7  # snapkv pooling kernel
    kv_pooling: str = "avg"  # snapkv pooling: avg or max
    kv_sinks: int = 4  # streamingllm attention sinks


@dataclass
class Generation:
    tokens: list[int]  # generated ids, without the stop token
    text: str | None  # decoded tokens when the engine has a tokenizer
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    prefill_s: float  # the batch's prefill + KV compression
    decode_s: float  # from the end of prefill until this row finished
    decode_tokens_per_s: float
    kv_retained: list[int] = field(default_factory=list)  # prompt KV slots kept, per layer
    stop_token: int | None = None


class TokenStream:
    """Iterates over the generated token ids of one prompt; `result` holds the Generation once the
    iteration is over."""

    def __init__(self, steps: Iterator[tuple[int, int]], holder: list[list[Generation]]):
        self._steps, self._holder = steps, holder
        self.result: Generation | None = None

    def __iter__(self) -> Iterator[int]:
        for _, token in self._steps:
            yield token
        self.result = self._holder[0][0]


class Engine:
    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, device=None):
        self.model = model
        self.tokenizer = tokenizer
        self.model_cfg = model.cfg
        self.device = (
            torch.device(device) if device is not None else next(model.parameters()).device
        )

    def generate(
        self, prompts: Sequence[Sequence[int]], cfg: GenerationConfig | None = None
    ) -> list[Generation]:
        """Generate for a batch of token-id prompts; one Generation per prompt, in order."""
        holder: list[list[Generation]] = []
        for _ in self._run(prompts, cfg or GenerationConfig(), holder):
            pass
        return holder[0]

    def stream(self, prompt: Sequence[int], cfg: GenerationConfig | None = None) -> TokenStream:
        """Token ids of one prompt as they are produced; the request is validated here (errors
        raise now), the Generation is in `.result` after the iteration."""
        holder: list[list[Generation]] = []
        return TokenStream(self._run([prompt], cfg or GenerationConfig(), holder), holder)

    # ---- checks ---------------------------------------------------------------------------------
    def _check(self, prompts: Sequence[Sequence[int]], cfg: GenerationConfig) -> None:
        vocab, context = self.model_cfg.vocab_size, self.model_cfg.seq_len
        if not prompts:
            raise LmlabError("no prompts to generate from")
        if cfg.max_new_tokens < 0:
            raise LmlabError(f"max_new_tokens must be >= 0, got {cfg.max_new_tokens}")
        if cfg.temperature < 0:
            raise LmlabError(f"temperature must be >= 0, got {cfg.temperature}")
        if cfg.top_k < 0:
            raise LmlabError(f"top_k must be >= 0 (0 = off), got {cfg.top_k}")
        if not 0.0 < cfg.top_p <= 1.0:
            raise LmlabError(f"top_p must be in (0, 1] (1 = off), got {cfg.top_p}")
        for name, ids in (("stop", cfg.stop_tokens), ("banned", cfg.banned_tokens)):
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise LmlabError(f"{name} token ids {bad} are outside the vocabulary of {vocab}")
        if len(set(cfg.banned_tokens)) >= vocab:
            raise LmlabError("every token of the vocabulary is banned")
        for i, prompt in enumerate(prompts):
            n = len(prompt)
            if n == 0:
                raise LmlabError(f"prompt {i} is empty")
            if n + cfg.max_new_tokens > context:
                over = n + cfg.max_new_tokens - context
                raise LmlabError(
                    f"prompt of {n} tokens + {cfg.max_new_tokens} new tokens exceeds the context "
                    f"of {context} by {over}"
                )
            if min(prompt) < 0 or max(prompt) >= vocab:
                raise LmlabError(f"prompt {i} has token ids outside the vocabulary of {vocab}")

    # ---- the loop -------------------------------------------------------------------------------
    def _run(
        self,
        prompts: Sequence[Sequence[int]],
        cfg: GenerationConfig,
        holder: list[list[Generation]],
    ) -> Iterator[tuple[int, int]]:
        """Validate now (so a bad request fails before any streaming starts), then return the
        step generator."""
        prompts = [[int(t) for t in p] for p in prompts]
        self._check(prompts, cfg)
        policy = make_policy(
            cfg.kv_policy,
            cfg.kv_budget,
            window=cfg.kv_window,
            kernel=cfg.kv_kernel,
            sinks=cfg.kv_sinks,
            pooling=cfg.kv_pooling,
            seed=cfg.seed,
        )
        return self._steps(prompts, cfg, policy, holder)

    def _steps(
        self,
        prompts: list[list[int]],
        cfg: GenerationConfig,
        policy: KVPolicy,
        holder: list[list[Generation]],
    ) -> Iterator[tuple[int, int]]:
        """Yields (row, token) as tokens are produced; appends the results to `holder` at the end.
        Inference mode is entered per model call so it never leaks into the consumer between
        yields."""
        B, T = len(prompts), max(len(p) for p in prompts)
        pads = [T - len(p) for p in prompts]
        ids = torch.tensor([[0] * pad + p for pad, p in zip(pads, prompts, strict=True)])
        stops, banned = set(cfg.stop_tokens), list(dict.fromkeys(cfg.banned_tokens))
        gens = [
            torch.Generator(device=self.device).manual_seed(row_seed(cfg.seed, i)) for i in range(B)
        ]
        was_training = self.model.training
        self.model.eval()
        try:
            t0 = self._clock()
            cache = KVCache(
                B,
                self.model_cfg.n_layer,
                T + cfg.max_new_tokens,
                left_pad=pads,
                record_queries=policy.query_window,
            )
            with torch.inference_mode():
                logits = self.model(ids.to(self.device), kv_cache=cache, last_only=True)[:, -1]
                retained = cache.compress(policy)
            t1 = self._clock()
            prefill_s = t1 - t0

            out: list[list[int]] = [[] for _ in range(B)]
            finish: list[str | None] = [None] * B
            stop_token: list[int | None] = [None] * B
            decode_s = [0.0] * B
            active = list(range(B))
            if cfg.max_new_tokens == 0:
                finish = ["length"] * B
                active = []
            while active:
                with torch.inference_mode():
                    nxt = sample_next(
                        logits,
                        [gens[i] for i in active],
                        temperature=cfg.temperature,
                        top_k=cfg.top_k,
                        top_p=cfg.top_p,
                        banned=banned,
                    )
                keep, produced = [], []
                for j, (row, tok) in enumerate(zip(active, nxt.tolist(), strict=True)):
                    if tok in stops:
                        finish[row], stop_token[row] = "stop", tok
                    else:
                        out[row].append(tok)
                        produced.append((row, tok))
                        if len(out[row]) >= cfg.max_new_tokens:
                            finish[row] = "length"
                    if finish[row] is None:
                        keep.append(j)
                    else:
                        decode_s[row] = self._clock() - t1
                yield from produced
                if not keep:
                    break
                if len(keep) < len(active):
                    cache.select_rows(keep)
                    active = [active[j] for j in keep]
                    nxt = nxt[torch.tensor(keep, device=nxt.device)]
                with torch.inference_mode():
                    logits = self.model(nxt[:, None], kv_cache=cache)[:, -1]
        finally:
            self.model.train(was_training)

        results = []
        for row in range(B):
            n_out = len(out[row])
            results.append(
                Generation(
                    tokens=out[row],
                    text=self.tokenizer.decode(out[row]) if self.tokenizer is not None else None,
                    finish_reason=finish[row],  # type: ignore[arg-type]
                    prompt_tokens=len(prompts[row]),
                    prefill_s=prefill_s,
                    decode_s=decode_s[row],
                    decode_tokens_per_s=n_out / decode_s[row] if decode_s[row] > 0 else 0.0,
                    kv_retained=retained[row],
                    stop_token=stop_token[row],
                )
            )
        holder.append(results)

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()
