"""The GPT student's inputs: a tokenizer and every item's token ids, tokenized once.

The tokenizer is recipe_args.gpt.tokenizer, else the one init_from was trained with, else a
byte-level BPE trained on the items themselves with lmlab's own trainer (cached under
LMLAB_HOME/distill/tokenizers/<hash of the texts>-bpe<vocab>/). Each item becomes
[BOS, *tokens] cut to max_len; the rows sit in one [N, L] tensor padded on the right with PAD,
so a batch is a gather of rows by item id, like the teacher matrix for the projection head.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.errors import LmlabError
from lmlab.model.config import ModelConfig
from lmlab.paths import atomic_dir, lmlab_home
from lmlab.studies.distill.config import GptStudentArgs, check_max_len
from lmlab.studies.distill.student import PAD
from lmlab.text.base import Tokenizer


@dataclass
class TextInputs:
    tokenizer: Tokenizer
    rows: torch.Tensor  # [N, L] long, PAD after each item's tokens
    model: ModelConfig  # the encoder's architecture (from init_from, or built here)


def texts_hash(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def corpus_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE trained on the items (one per line), cached per texts and vocabulary."""
    from lmlab.text.tokenizer import load_tokenizer, train_tokenizer

    folder: Path = lmlab_home() / "distill" / "tokenizers" / f"{texts_hash(texts)}-bpe{vocab_size}"
    if not (folder / "tokenizer.json").exists():
        with atomic_dir(folder) as tmp:
            corpus = tmp / "items.txt"
            corpus.write_text("\n".join(t.replace("\n", " ") for t in texts), encoding="utf-8")
            train_tokenizer([corpus], "bpe", vocab_size, out=tmp, progress=False)
            corpus.unlink()
    return load_tokenizer(folder)


def resolve_tokenizer(g: GptStudentArgs, texts: list[str]) -> Tokenizer:
    from lmlab.model.checkpoint import load_tokenizer_for
    from lmlab.text.tokenizer import load_tokenizer

    tok = load_tokenizer(g.tokenizer) if g.tokenizer else None
    if g.init_from:
        own = load_tokenizer_for(g.init_from)
        if tok is not None and tok.hash != own.hash:
            raise LmlabError(
                f"recipe_args.gpt.tokenizer has hash {tok.hash} but init_from {g.init_from} was "
                f"trained with {own.hash} (drop recipe_args.gpt.tokenizer)"
            )
        return own
    return tok if tok is not None else corpus_tokenizer(texts, g.vocab_size)


def encoder_config(g: GptStudentArgs, tok: Tokenizer) -> ModelConfig:
    """The checkpoint's GPT config (init_from), else defaults < gpt.model < the vocabulary."""
    if not g.init_from:
        return ModelConfig.model_validate(g.encoder_config(tok.vocab_size))
    from lmlab.model.checkpoint import read_meta
    from lmlab.model.registry import arch_of

    arch = arch_of(read_meta(g.init_from))
    if arch.get("class", "gpt") not in ("gpt", "reward"):
        raise LmlabError(
            f"recipe_args.gpt.init_from {g.init_from} holds a {arch.get('class')!r} model, "
            "not a GPT"
        )
    cfg = ModelConfig.model_validate(arch["config"])
    check_max_len(g.max_len, cfg.seq_len, f"the seq_len of init_from {g.init_from}")
    return cfg


def token_rows(tok: Tokenizer, texts: list[str], max_len: int) -> torch.Tensor:
    """[N, L] ids (L = the longest row, at most max_len): [BOS, *tokens][:max_len], then PAD."""
    rows = [[tok.bos_id, *ids][:max_len] for ids in tok.encode_batch(texts)]
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def text_inputs(g: GptStudentArgs, texts: list[str] | None, source: str) -> TextInputs:
    if texts is None:
        raise LmlabError(
            f"recipe_args.student=gpt reads the items' texts, but the teacher {source} has none "
            "(set recipe_args.teacher_texts)"
        )
    tok = resolve_tokenizer(g, texts)
    model = encoder_config(g, tok)
    if model.vocab_size < tok.vocab_size:
        raise LmlabError(
            f"recipe_args.gpt.init_from {g.init_from}: vocabulary {model.vocab_size} is smaller "
            f"than its tokenizer's {tok.vocab_size}"
        )
    return TextInputs(tok, token_rows(tok, texts, g.max_len), model)
