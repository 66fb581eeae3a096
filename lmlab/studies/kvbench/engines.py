"""What the bench needs from an engine, and the in-process `local` engine (lmlab's own).

An engine counts prompt tokens (for the bins), fits a prompt into its context (LongBench's middle
truncation), and answers one grid cell (a policy at a budget) for many requests, yielding each
reply as it completes so the runner can store it in its own transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.studies.kvbench.config import GenerationOptions, PolicyOptions


@dataclass
class Item:
    request_id: str
    example_id: str
    prompt: str
    max_new_tokens: int
    kv_suffix: int = 0  # the last N prompt tokens are prefilled after compression
    suffix: str | None = None  # their text, when the config named a part of the prompt


@dataclass
class Reply:
    text: str = ""
    finish_reason: str | None = None
    error_type: str | None = None
    error: str | None = None
    attempts: int = 1
    latency_s: float | None = None
    ttft_s: float | None = None
    prefill_s: float | None = None
    decode_s: float | None = None
    decode_tokens_per_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    kv_retained: list[int] | None = None
    kv_bytes_kept: int | None = None
    kv_bytes_full: int | None = None
    peak_mem_bytes: int | None = None
    extra: dict = field(default_factory=dict)


class BenchEngine:
    kind = "base"
    length_unit = "tokens"

    def model_id(self) -> str:
        raise NotImplementedError

    def policies(self) -> tuple[str, ...]:
        raise NotImplementedError

    def preflight(self) -> None:
        """Fail early (before any row is written) when the engine cannot answer at all."""

    def fit(self, text: str, max_new: int, truncate: str) -> tuple[int, int]:
        """(prompt tokens the engine will see, tokens before truncation)."""
        raise NotImplementedError

    def suffix_tokens(self, prompt: str, suffix: str) -> int:
        """How many of the prompt's tokens the trailing text `suffix` covers."""
        raise LmlabError(
            f"generation.kv_suffix: the {self.kind} engine cannot count a text suffix's tokens; "
            "give a number of tokens"
        )

    def run_cell(
        self,
        items: list[Item],
        policy: str,
        budget: float,
        options: PolicyOptions,
        gen: GenerationOptions,
    ) -> Iterator[tuple[Item, Reply]]:
        raise NotImplementedError


def middle_truncate(ids: list[int], limit: int) -> list[int]:
    """LongBench's truncation (pred.py): keep the first and last halves of what fits."""
    if len(ids) <= limit:
        return ids
    half = limit // 2
    return ids[:half] + ids[len(ids) - (limit - half) :]


def count_suffix(encode, prompt: str, suffix: str) -> int:
    """Tokens of `prompt` past the tokens it shares with the prompt minus `suffix`: a token that
    merges across the boundary counts as the suffix's, so the prefix is never split."""
    ids, head = encode(prompt), encode(prompt[: len(prompt) - len(suffix)])
    same = 0
    for a, b in zip(ids, head, strict=False):
        if a != b:
            break
        same += 1
    return len(ids) - same


def random_checkpoint(spec, cfg, out: Path) -> Path:
    """Write (once per spec and dataset) an untrained GPT with random weights and a word-level
    tokenizer over the dataset's words; see `RandomModel`."""
    import torch

    from lmlab.config import config_hash
    from lmlab.model.checkpoint import save_checkpoint
    from lmlab.model.config import ModelConfig
    from lmlab.model.gpt import GPT
    from lmlab.studies.kvbench import datasets as D
    from lmlab.text.tokenizer import build_word_tokenizer

    rows = D.load_rows(cfg.dataset)
    template = D.template_for(cfg.dataset)
    words = sorted(
        {w for r in rows for w in (D.render(template, r) + " " + " ".join(r["answers"])).split()}
    )
    key = config_hash({"spec": spec.model_dump(mode="json"), "words": words})
    ckpt = out / "model" / f"random-{key}"
    if (ckpt / "model.safetensors").exists():
        return ckpt
    tok_dir = out / "model" / f"tokenizer-{key}"
    tok = build_word_tokenizer(words, tok_dir)
    mcfg = ModelConfig(
        depth=spec.depth,
        n_embd=spec.n_embd,
        n_head=spec.n_head,
        vocab_size=tok.vocab_size,
        seq_len=spec.seq_len,
    )
    torch.manual_seed(spec.seed)
    model = GPT(mcfg)
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():  # random, not zero-init, projections: every KV position matters
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * spec.scale)
    meta = {
        "model": mcfg.model_dump(mode="json"),
        "tokenizer": {"hash": tok.hash},
        "tokenizer_dir": str(tok_dir),
        "note": "kvbench random_init: untrained",
    }
    return save_checkpoint(ckpt, model, meta)


def resolve_glob(path: str) -> Path:
    """A checkpoint path, or a glob (a run id's hash differs by machine) matching exactly one."""
    if not any(c in path for c in "*?["):
        return Path(path)
    import glob

    found = sorted(glob.glob(path))
    if len(found) != 1:
        raise LmlabError(
            f"engine.checkpoint {path!r} matches {len(found)} paths ({', '.join(found[:3])}); "
            "it must match exactly one"
        )
    return Path(found[0])


class LocalBench(BenchEngine):
    """An lmlab checkpoint in this process; the policy is applied by lmlab's engine."""

    kind = "local"

    def __init__(self, bench_cfg, out: Path):
        from lmlab.model.checkpoint import load_tokenizer_for, read_meta

        self.cfg = cfg = bench_cfg.engine
        if cfg.checkpoint:
            self.ckpt = resolve_glob(cfg.checkpoint)
        elif cfg.random_init is not None:
            self.ckpt = random_checkpoint(cfg.random_init, bench_cfg, out)
        else:
            raise LmlabError("engine.kind local needs engine.checkpoint (or engine.random_init)")
        self.meta = read_meta(self.ckpt)
        self.tok = load_tokenizer_for(self.ckpt)
        self.seq_len = int(self.meta["model"]["seq_len"])
        self._model = None

    def model_id(self) -> str:
        return str(self.ckpt)

    def policies(self) -> tuple[str, ...]:
        from lmlab.model.kv_policies import KV_POLICIES

        return tuple(KV_POLICIES)

    def encode(self, text: str) -> list[int]:
        return [self.tok.bos_id, *self.tok.encode(text)]

    def fit(self, text: str, max_new: int, truncate: str) -> tuple[int, int]:
        n = len(self.encode(text))
        limit = self.seq_len - max_new
        return (min(n, limit) if truncate == "middle" else n), n

    def suffix_tokens(self, prompt: str, suffix: str) -> int:
        return count_suffix(self.encode, prompt, suffix)

    @property
    def model(self):
        if self._model is None:
            from lmlab.model.checkpoint import load_model

            self._model, _ = load_model(self.ckpt, device=self.cfg.device)
            self._model.eval()
        return self._model

    def stop_tokens(self, gen: GenerationOptions) -> list[int]:
        stops = {self.tok.bos_id, self.tok.eot_id}
        newline = self.tok.encode("\n")
        if gen.stop_at_newline and len(newline) == 1:
            stops.add(newline[0])
        return sorted(t for t in stops if t is not None)

    def kv_bytes(self, positions: int) -> int:
        """Bytes of K and V for `positions` cache slots of one layer."""
        m = self.model.cfg
        elem = next(self.model.parameters()).element_size()
        return positions * m.n_kv_head * m.head_dim * 2 * elem

    def run_cell(self, items, policy, budget, options, gen):
        from lmlab.model.engine import Engine, GenerationConfig

        engine = Engine(self.model, self.tok)
        stops = self.stop_tokens(gen)
        limit_of = {it.request_id: self.seq_len - it.max_new_tokens for it in items}
        ready, out = [], []
        for it in items:
            ids = self.encode(it.prompt)
            if len(ids) > limit_of[it.request_id] and gen.truncate == "none":
                over = len(ids) + it.max_new_tokens - self.seq_len
                msg = f"prompt of {len(ids)} tokens exceeds the context of {self.seq_len} by {over}"
                out.append((it, Reply(error_type="CONTEXT_LENGTH_EXCEEDED", error=msg)))
            else:
                ready.append((it, middle_truncate(ids, limit_of[it.request_id])))
        yield from out
        for start in range(0, len(ready), self.cfg.batch_size):
            chunk = ready[start : start + self.cfg.batch_size]
            cfgs = [
                GenerationConfig(
                    max_new_tokens=it.max_new_tokens,
                    temperature=gen.temperature,
                    seed=gen.seed,
                    stop_tokens=stops,
                    kv_policy=policy,
                    kv_budget=budget,
                    kv_window=options.window,
                    kv_kernel=options.kernel,
                    kv_pooling=options.pooling,
                    kv_sinks=options.sinks,
                    kv_suffix=it.kv_suffix,
                )
                for it, _ in chunk
            ]
            t0 = time.perf_counter()
            results = self._generate(engine, [ids for _, ids in chunk], cfgs)
            wall = time.perf_counter() - t0
            for (it, ids), res in zip(chunk, results, strict=True):
                yield it, self._reply(res, len(ids), wall)

    def _generate(self, engine, prompts, cfgs) -> list:
        """One request per prompt, each with its own settings; an invalid one fails alone."""
        from lmlab.model.engine import Request

        return engine.run([Request(p, c) for p, c in zip(prompts, cfgs, strict=True)])

    def _reply(self, res, prompt_len: int, wall: float) -> Reply:
        from lmlab.studies.kvbench.metrics import error_type_for

        if res.error:
            return Reply(
                error_type=error_type_for(res.error), error=res.error, prompt_tokens=prompt_len
            )
        g = res.samples[0]
        n_layer = self.model.cfg.n_layer
        retained = list(g.kv_retained or [])
        latency = g.prefill_s + g.decode_s
        return Reply(
            text=self.tok.decode(g.tokens, skip_special=True),
            finish_reason=g.finish_reason,
            latency_s=latency,
            ttft_s=g.ttft_s,
            prefill_s=g.prefill_s,
            decode_s=g.decode_s,
            decode_tokens_per_s=g.decode_tokens_per_s,
            prompt_tokens=g.prompt_tokens,
            completion_tokens=len(g.tokens),
            kv_retained=retained,
            kv_bytes_kept=sum(self.kv_bytes(r) for r in retained) if retained else None,
            kv_bytes_full=self.kv_bytes(prompt_len) * n_layer,
            peak_mem_bytes=_peak_memory(self.cfg.device),
            extra={"batch_wall_s": wall},
        )


def _peak_memory(device: str) -> int | None:
    """Peak accelerator memory where it is measurable (CUDA); None on CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    return int(torch.cuda.max_memory_allocated())


def build_engine(cfg, out: Path) -> BenchEngine:
    kind = cfg.engine.kind
    if kind == "local":
        return LocalBench(cfg, out)
    if kind == "openai":
        from lmlab.studies.kvbench.openai_engine import OpenAIBench

        return OpenAIBench(cfg.engine)
    from lmlab.studies.kvbench.kvpress_engine import KvpressBench

    return KvpressBench(cfg.engine)
