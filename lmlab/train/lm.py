"""The language-modelling recipe (pretrain and SFT), the first recipe on the one loop."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lmlab.data.loader import TokenLoader
from lmlab.data.shards import split_view
from lmlab.errors import LmlabError
from lmlab.model.checkpoint import load_model, read_meta
from lmlab.model.gpt import GPT
from lmlab.text.tokenizer import Tokenizer, load_tokenizer
from lmlab.train.config import TrainConfig
from lmlab.train.dist import Dist
from lmlab.train.recipes import Recipe, RecipeParts, RunContext, register_recipe


def lm_objective(model, batch) -> tuple[torch.Tensor, dict]:
    """Next-token cross-entropy; targets of -1 (masked or padding) do not count."""
    x, y = batch
    counted = int((y != -1).sum())
    if counted == 0:  # every target masked: a zero loss that keeps the graph, not a NaN
        return model(x).sum() * 0.0, {"tokens": x.numel()}
    return model(x, y), {"tokens": x.numel()}


def token_bytes(tok: Tokenizer, vocab: int) -> torch.Tensor:
    """UTF-8 length of each token (0 for special tokens): the denominator of bits per byte."""
    out = torch.zeros(vocab, dtype=torch.float64)
    for i in range(min(vocab, tok.vocab_size)):
        if not tok.is_special(i):
            out[i] = len(tok.decode([i]).encode("utf-8"))
    return out


def make_evaluator(val: TokenLoader, dist: Dist, nbytes: torch.Tensor, batches: int):
    """Mean validation loss and bits per byte over the same fixed batches every time."""

    def evaluate(model) -> dict[str, float]:
        stats = torch.zeros(3, dtype=torch.float64, device=dist.device)  # nats, tokens, bytes
        for x, y in val.iter_val(batches):
            x, y = x.to(dist.device), y.to(dist.device)
            losses = model(x, y, loss_reduction="none").double()
            keep = y != -1
            stats[0] += losses[keep].sum()
            stats[1] += keep.sum()
            stats[2] += nbytes.to(dist.device)[y[keep]].sum()
        dist.all_sum(stats)
        nats, count, byte_count = stats.tolist()
        if count == 0:
            return {}
        out = {"val_loss": nats / count}
        if byte_count > 0:
            out["val_bpb"] = nats / (byte_count * torch.log(torch.tensor(2.0)).item())
        return out

    return evaluate


def resolve_sources(cfg: TrainConfig) -> tuple[dict[str, float], str | None]:
    """Shard sources and tokenizer dir: built-in corpus, config, or LMLAB_DATA_DIR."""
    if cfg.data.builtin:
        from lmlab.data.builtin import builtin_dataset

        data_dir, tok_dir = builtin_dataset(cfg.data.builtin, cfg.phase)
        return {str(data_dir): 1.0}, cfg.data.tokenizer or str(tok_dir)
    sources = dict(cfg.data.sources)
    if not sources and os.environ.get("LMLAB_DATA_DIR"):
        sources = {os.environ["LMLAB_DATA_DIR"]: 1.0}
    if not sources:
        raise LmlabError(
            "no training data: set data.sources, pass --data DIR, set LMLAB_DATA_DIR, "
            "or use data.builtin=toy"
        )
    for key, paths in (("data.sources", sources), ("data.val_sources", cfg.data.val_sources or {})):
        for path in paths:
            if not Path(path).exists():
                raise LmlabError(f"{key}: no such directory: {path}")
    return sources, cfg.data.tokenizer


def _tokenizer_for(sources: dict[str, float], tok_dir: str | None) -> Tokenizer:
    if tok_dir:
        return load_tokenizer(tok_dir)
    first = next(iter(sources))
    meta = split_view(first, "train").shard_dir.tokenizer_meta
    if not meta.get("path"):
        raise LmlabError(f"{first}: its meta.json names no tokenizer path; set data.tokenizer")
    return load_tokenizer(meta["path"])


class LMRecipe(Recipe):
    """Next-token prediction on token shards; SFT (phase=sft) masks the loss to answers."""

    name = "lm"
    description = "pretrain or SFT a GPT on token shards"

    def prepare(self, cfg: TrainConfig, args):
        """Resolve data, tokenizer and starting weights into the config that will really run."""
        sources, tok_dir = resolve_sources(cfg)
        tok = _tokenizer_for(sources, tok_dir)
        init_meta = None
        model_cfg = cfg.model.model_copy(update={"vocab_size": tok.vocab_size})
        if cfg.init_from:
            init_meta = read_meta(cfg.init_from)
            want = (init_meta.get("tokenizer") or {}).get("hash")
            if want and want != tok.hash:
                raise LmlabError(
                    f"init_from {cfg.init_from} was trained with tokenizer {want} but the "
                    f"data uses {tok.hash}"
                )
            # the architecture comes from the checkpoint; the context may differ (rotary allows it)
            model_cfg = model_cfg.model_validate(
                {**init_meta["model"], "seq_len": cfg.model.seq_len}
            )
        cfg = cfg.model_copy(update={"model": model_cfg})
        return cfg, tok, {"sources": sources, "init_meta": init_meta}

    def build(self, ctx: RunContext) -> RecipeParts:
        cfg, dist, tok = ctx.cfg, ctx.dist, ctx.tokenizer
        sources, init_meta = ctx.prepared["sources"], ctx.prepared["init_meta"]
        model = GPT(cfg.model)
        if cfg.init_from:
            start, _ = load_model(cfg.init_from)
            model.load_state_dict(start.state_dict())
        sft = cfg.sft
        use_mask = cfg.data.use_mask if cfg.data.use_mask is not None else sft
        doc_rows = cfg.data.doc_rows if cfg.data.doc_rows is not None else sft
        common = dict(
            seq_len=cfg.model.seq_len,
            batch_size=cfg.micro_batch,
            seed=cfg.seed,
            rank=dist.rank,
            world_size=dist.world_size,
            expected_tokenizer_hash=tok.hash,
            expected_from="tokenizer",
            use_mask=use_mask,
            doc_rows=doc_rows,
        )
        train_data = TokenLoader(sources, "train", accum=cfg.accum_steps(dist.world_size), **common)
        val_data = TokenLoader(cfg.data.val_sources or sources, "val", **common)
        evaluate = make_evaluator(
            val_data, dist, token_bytes(tok, cfg.model.vocab_size), cfg.eval_batches
        )
        meta = {
            "num_params": model.num_params(),
            "init_from": cfg.init_from,
            "init_step": (init_meta or {}).get("step"),
        }
        return RecipeParts(model, lm_objective, train_data, evaluate, ("val_loss", "min"), meta)


register_recipe(LMRecipe())


def prepare(cfg: TrainConfig):
    """(cfg, sources, tokenizer, init_meta): the LM recipe's resolution (kept for callers)."""
    cfg, tok, prepared = LMRecipe().prepare(cfg, None)
    return cfg, prepared["sources"], tok, prepared["init_meta"]
