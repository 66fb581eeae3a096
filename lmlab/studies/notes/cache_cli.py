"""`lmlab cache build-all`: the notes workflow's token caches (mounted by lmlab/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmlab.cli_common import console
from lmlab.errors import LmlabError
from lmlab.studies.notes.cache_spec import ALL_SOURCES
from lmlab.studies.notes.cli import PrimerOpt, RoamOpt, SeedOpt, TokenizerOpt
from lmlab.studies.notes.paths import (
    SAMPLE_PRIMER,
    SAMPLE_ROAM_DIR,
    default_cache_dir,
    default_tokenizer_dir,
)

cache_app = typer.Typer(
    help="Token caches of the notes workflow (Roam notes, primer, public corpora).",
    no_args_is_help=True,
)


@cache_app.callback()
def _cache_group() -> None:
    """Token caches of the notes workflow (Roam notes, primer, public corpora)."""


def _split_names(values: list[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_SOURCES]
    if unknown:
        raise LmlabError(
            f"--only: unknown source(s) {', '.join(unknown)} (expected: {', '.join(ALL_SOURCES)})"
        )
    return tuple(dict.fromkeys(names))


@cache_app.command("build-all")
def build_all_command(
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help="Where caches go (default: $LMLAB_HOME/notes/cache)."),
    ] = None,
    tokenizer: TokenizerOpt = None,
    roam_dir: RoamOpt = None,
    primer: PrimerOpt = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help=f"Build only these (comma list): {', '.join(ALL_SOURCES)}."),
    ] = None,
    fineweb_train_tokens: Annotated[
        int, typer.Option("--fineweb-train-tokens", min=1, help="fineweb-edu train budget.")
    ] = 200_000_000,
    fineweb_val_tokens: Annotated[
        int, typer.Option("--fineweb-val-tokens", min=1, help="fineweb-edu val budget.")
    ] = 5_000_000,
    wikitext_train_tokens: Annotated[
        int | None,
        typer.Option(
            "--wikitext-train-tokens", min=1, help="wikitext-103 train budget (default: all)."
        ),
    ] = None,
    sft_train_tokens: Annotated[
        int | None,
        typer.Option(
            "--sft-train-tokens", min=1, help="Budget per public SFT corpus (default: all)."
        ),
    ] = None,
    sft_context: Annotated[
        int,
        typer.Option(
            "--sft-context", min=8, help="Max tokens per SFT conversation (oldest turns dropped)."
        ),
    ] = 1024,
    val_frac: Annotated[
        float, typer.Option("--val-frac", min=0.0, max=1.0, help="Val share of roam and primer.")
    ] = 0.1,
    heldout_frac: Annotated[
        float,
        typer.Option(
            "--heldout-frac", min=0.0, max=1.0, help="Val share of a corpus with no val split."
        ),
    ] = 0.02,
    shard_bytes: Annotated[
        int, typer.Option("--shard-bytes", min=64, help="Bytes per shard file.")
    ] = 128 * 2**20,
    seed: SeedOpt = 42,
    force: Annotated[bool, typer.Option("--force", help="Rebuild finished caches too.")] = False,
    fineweb_path: Annotated[
        Path | None, typer.Option("--fineweb-path", help="Local fineweb-edu (parquet/jsonl).")
    ] = None,
    wikitext_path: Annotated[
        Path | None, typer.Option("--wikitext-path", help="Local wikitext-103 (parquet/jsonl).")
    ] = None,
    dolly_path: Annotated[
        Path | None, typer.Option("--dolly-path", help="Local dolly-15k (parquet/jsonl).")
    ] = None,
    oasst_path: Annotated[
        Path | None, typer.Option("--oasst-path", help="Local oasst1 (parquet/jsonl).")
    ] = None,
    oasst_lang: Annotated[
        str, typer.Option("--oasst-lang", help="oasst1 language to keep ('all' keeps every one).")
    ] = "en",
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Build pretrain caches (fineweb_edu, wikitext, roam, primer) and SFT caches (dolly15k,
    oasst1, primer), each with train/ and val/ shard directories.

    Finished caches are skipped (rebuilt when their inputs, tokenizer or settings changed, or with
    --force). A public corpus that cannot be reached is reported and skipped, unless named with
    --only or given a local path: then it is an error.

    Example: lmlab cache build-all --only roam,primer
    Example: lmlab cache build-all --cache-dir data/cache --roam-dir data/.roam-data --seed 42
    """
    from lmlab.studies.notes.caches import BuildOptions, build_all

    chosen = _split_names(only)
    paths = {
        "fineweb_edu": fineweb_path,
        "wikitext": wikitext_path,
        "dolly15k": dolly_path,
        "oasst1": oasst_path,
    }
    explicit = set(chosen or ()) | {n for n, p in paths.items() if p is not None}
    opts = BuildOptions(
        cache_dir=cache_dir or default_cache_dir(),
        tokenizer=tokenizer or default_tokenizer_dir(),
        roam_dir=roam_dir or SAMPLE_ROAM_DIR,
        primer=primer or SAMPLE_PRIMER,
        only=chosen or ALL_SOURCES,
        explicit=frozenset(explicit),
        fineweb_train_tokens=fineweb_train_tokens,
        fineweb_val_tokens=fineweb_val_tokens,
        wikitext_train_tokens=wikitext_train_tokens,
        sft_train_tokens=sft_train_tokens,
        val_frac=val_frac,
        heldout_frac=heldout_frac,
        sft_context=sft_context,
        shard_bytes=shard_bytes,
        seed=seed,
        force=force,
        fineweb_path=fineweb_path,
        wikitext_path=wikitext_path,
        dolly_path=dolly_path,
        oasst_path=oasst_path,
        oasst_lang=None if oasst_lang == "all" else oasst_lang,
        progress=progress,
    )
    if (
        not (opts.tokenizer / "spm.model").is_file()
        and not (opts.tokenizer / "tokenizer.json").is_file()
    ):
        raise LmlabError(
            f"tokenizer not found: {opts.tokenizer} (train one with `lmlab notes tokenizer`, "
            "or pass --tokenizer DIR)"
        )
    results = build_all(opts)
    _print_results(results, opts.cache_dir)


def _print_results(results, cache_dir: Path) -> None:
    from rich.table import Table

    table = Table("cache", "state", "train tokens", "val tokens", "docs", "note", box=None)
    problems = []
    for r in results:
        if r.state in ("unavailable", "failed"):
            problems.append(f"{r.state}: {r.note}")
        tr, va = r.tokens.get("train"), r.tokens.get("val")
        docs = sum(r.documents.values()) if r.documents else None
        table.add_row(
            f"{r.kind}/{r.name}",
            r.state,
            f"{tr:,}" if tr is not None else "-",
            f"{va:,}" if va is not None else "-",
            f"{docs:,}" if docs is not None else "-",
            "(see below)" if r.state in ("unavailable", "failed") else r.note,
        )
    console.print(table)
    for line in problems:
        typer.echo(line, err=True)
    typer.echo(f"caches in {cache_dir}")
