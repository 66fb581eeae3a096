"""`lmlab tokenizer train|info`: train a tokenizer on files, or describe a saved one."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Train and inspect tokenizers (byte-level BPE or SentencePiece).", no_args_is_help=True
)

EXAMPLE_TEXT = "Hello, world! Ünïcödé, 日本語 and <|eot|> as plain text."


class Kind(StrEnum):
    bpe = "bpe"
    sentencepiece = "sentencepiece"


class SpmModelType(StrEnum):
    unigram = "unigram"
    bpe = "bpe"


@app.command("train")
def train(
    input_glob: Annotated[
        list[str], typer.Option("--input-glob", help="Files to read; ** recurses (repeatable).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Directory to write the tokenizer to.")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Vocabulary size.", min=1)],
    kind: Annotated[Kind, typer.Option("--kind", help="Backend.")] = Kind.bpe,
    max_chars: Annotated[
        int | None, typer.Option("--max-chars", help="Read at most this many characters.", min=1)
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the --max-chars subsample.")] = 0,
    spm_model_type: Annotated[
        SpmModelType, typer.Option("--spm-model-type", help="SentencePiece algorithm.")
    ] = SpmModelType.unigram,
) -> None:
    """Train a tokenizer on text files and save it to a directory.

    Example: lmlab tokenizer train --input-glob 'notes/**/*.md' --vocab-size 4000 --out tok/
    """
    from lmlab.text.corpus import expand_globs
    from lmlab.text.tokenizer import train_tokenizer

    files = expand_globs(input_glob)
    tok = train_tokenizer(
        files,
        kind=kind.value,
        vocab_size=vocab_size,
        out=out,
        max_chars=max_chars,
        seed=seed,
        spm_model_type=spm_model_type.value,
    )
    info = tok.training_info or {}
    if tok.vocab_size < vocab_size:  # BPE stops when no pair of tokens is left to merge
        typer.echo(
            f"note: the corpus supports {tok.vocab_size} tokens, fewer than the {vocab_size} "
            "asked (no pair was left to merge); more text gives a larger vocabulary",
            err=True,
        )
    typer.echo(f"saved {tok.kind} tokenizer to {out}")
    typer.echo(f"  vocab size   {tok.vocab_size} (asked {vocab_size})")
    typer.echo(f"  hash         {tok.hash}")
    typer.echo(f"  special ids  {json.dumps(tok.special_ids)}")
    typer.echo(
        f"  read         {info.get('chars', 0):,} chars from {info.get('num_files', 0)} files"
    )
    typer.echo(f"  took         {info.get('seconds', 0):.1f} s")


@app.command("info")
def info(
    directory: Annotated[Path, typer.Argument(help="Tokenizer directory (or its file).")],
    text: Annotated[
        str, typer.Option("--text", help="Text to show the encoding of.")
    ] = EXAMPLE_TEXT,
) -> None:
    """Print a tokenizer's kind, vocab size, hash, special ids and an example encoding.

    Example: lmlab tokenizer info tok/ --text 'Hello there'
    """
    from lmlab.text.tokenizer import load_tokenizer

    tok = load_tokenizer(directory)
    ids = tok.encode(text)
    typer.echo(f"kind         {tok.kind}")
    typer.echo(f"vocab size   {tok.vocab_size}")
    typer.echo(f"hash         {tok.hash}")
    typer.echo(f"special ids  {json.dumps(tok.special_ids)}")
    typer.echo(f"example      {text!r}")
    typer.echo(f"  {len(ids)} tokens ({len(text) / max(len(ids), 1):.2f} chars/token): {ids}")
    typer.echo(f"  pieces     {[tok.id_to_piece(i) for i in ids]}")
    typer.echo(f"  decoded    {tok.decode(ids)!r}")
