"""`lmlab data ...`: look inside token shard directories; make them from your own files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from lmlab.data.format import META_FILE
from lmlab.data.shards import ShardDir, split_view
from lmlab.errors import LmlabError

app = typer.Typer(
    help="Token shards: make them from your files, inspect what a directory holds.",
    no_args_is_help=True,
)


@app.callback()
def _group() -> None:
    """Token shards: make them from your files, inspect what a directory holds."""


@app.command()
def shard(
    input_glob: list[str] = typer.Option(
        ..., "--input-glob", help="Files to read; ** recurses (repeatable)."
    ),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Tokenizer directory."),
    out: Path = typer.Option(..., "--out", help="Output: OUT/train and OUT/val shards."),
    kind: str = typer.Option(
        "text",
        "--kind",
        help='text: pretraining documents (a file each, or JSONL {"text"} lines); '
        'chat: JSONL {"messages": [...]} lines, SFT shards with a loss mask.',
    ),
    val_frac: float = typer.Option(
        0.05, "--val-frac", help="Share of documents held out for validation."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/val split."),
    shard_tokens: int = typer.Option(
        2**24, "--shard-tokens", min=1, help="Tokens per shard file (about)."
    ),
) -> None:
    """Turn your text files or chat JSONL into train/ and val/ shards for `lmlab train --data`.

    Example: lmlab data shard --input-glob 'corpus/**/*.txt' --tokenizer tok/ --out data/mine
    Example: lmlab data shard --input-glob chats.jsonl --kind chat --tokenizer tok/ --out data/sft
    """
    from lmlab.data.from_files import KINDS, shard_files
    from lmlab.text.corpus import expand_globs
    from lmlab.text.tokenizer import load_tokenizer

    if kind not in KINDS:
        raise LmlabError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    files = expand_globs(input_glob)
    tok = load_tokenizer(tokenizer)
    report = shard_files(
        files,
        tok,
        tokenizer,
        out,
        kind=kind,
        val_frac=val_frac,
        seed=seed,
        shard_tokens=shard_tokens,
    )
    typer.echo(f"wrote {kind} shards from {len(files)} file(s) to {out}")
    for split in ("train", "val"):
        typer.echo(
            f"  {split:<5} {report.documents[split]:,} documents, {report.tokens[split]:,} tokens"
        )
    if report.empty:
        typer.echo(f"  left out {report.empty} document(s) with no text")
    phase = " --phase sft" if kind == "chat" else ""
    typer.echo(f"train on them: lmlab train{phase} --data {out}")


@app.command()
def inspect(
    path: Path = typer.Argument(
        ..., help="A shard directory, or a parent holding train/ and val/."
    ),
    sample_chars: int = typer.Option(200, "--sample-chars", help="Characters of sample to show."),
) -> None:
    """Show a shard directory's counts, dtype, tokenizer, provenance, split and a sample.

    Example: lmlab data inspect runs/data/eval
    """
    if not (path / META_FILE).is_file() and (path / "train").is_dir() and (path / "val").is_dir():
        # the line names what each one is: train/ is not "validation"
        _show(ShardDir(path / "train"), sample_chars, "split: train (validation is val/ beside it)")
        _show(ShardDir(path / "val"), sample_chars, "split: val (the validation data)")
        return
    d = ShardDir(path)
    note = "no tokens"
    if d.n_tokens:
        val = split_view(path, "val")
        note = f"{val.rule} ({val.n_tokens:,} tokens)"
    _show(d, sample_chars, f"validation: {note}")


def _show(d: ShardDir, sample_chars: int, split_line: str) -> None:
    m, tok = d.meta, d.tokenizer_meta
    echo = typer.echo
    echo(f"{d.path}  ({d.kind} shards)")
    echo(
        f"  shards {d.n_shards}   tokens {d.n_tokens:,}   documents {d.n_documents:,}"
        f"   dtype {m['dtype']}"
    )
    echo(
        f"  tokenizer  kind={tok.get('kind', '?')}  vocab={tok.get('vocab_size', '?')}"
        f"  hash={tok['hash']}"
    )
    echo(
        f"  source {m.get('source') or '-'}   split {m.get('split', '-')}   seed {m.get('seed', '-')}"
    )
    echo(f"  {split_line}")
    if d.has_mask and d.n_tokens:
        masked = sum(int(np.count_nonzero(d.mask(i) == 0)) for i in range(d.n_shards))
        frac = masked / d.n_tokens
        echo(f"  loss mask: {frac:.1%} of tokens masked ({1 - frac:.1%} trained)")
    first = next(d.documents(), None)
    if first is None:
        echo("  sample: (no documents)")
        return
    ids = np.asarray(first[0]).tolist()
    echo(f"  sample (first document, {len(ids)} tokens incl. bos):")
    text = _decode(d, ids[1:])
    if text is None:
        shown = " ".join(map(str, ids[:32])) + (f" ... ({len(ids)} ids)" if len(ids) > 32 else "")
        echo(f"    ids: {shown}")
    else:
        text = text if len(text) <= sample_chars else text[:sample_chars] + "…"
        echo("    " + text.replace("\n", "\n    "))


def _decode(d: ShardDir, ids: list[int]) -> str | None:
    """Decode with the tokenizer named in meta.json, if it loads and matches; else None."""
    where = d.meta.get("tokenizer_path") or d.tokenizer_meta.get("path")
    if not where:
        return None
    p = Path(where)
    if not p.exists() and (d.path / p).exists():
        p = d.path / p
    try:
        from lmlab.text.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(p)
        if tokenizer.meta().get("hash") != d.tokenizer_hash:
            return None
        return tokenizer.decode(ids)
    except (ImportError, LmlabError, OSError):
        return None
