"""`lmlab notes tokenizer|train|chat|paths` (mounted by lmlab/cli.py; `lmlab cache build-all` is
in cache_cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmlab import config as C
from lmlab.cli_common import (
    ConfigOpt,
    DeviceOpt,
    ListProfilesOpt,
    PrintConfigOpt,
    ProfileOpt,
    ResumeOpt,
    SetOpt,
    resolve_or_exit,
)
from lmlab.studies.notes.paths import (
    PROFILE_DIR,
    SAMPLE_PRIMER,
    SAMPLE_ROAM_DIR,
    default_cache_dir,
    default_tokenizer_dir,
)

notes_app = typer.Typer(
    help="Chat model from your notes: tokenizer, training (pretrain -> SFT), chat.",
    no_args_is_help=True,
)


@notes_app.callback()
def _notes_group() -> None:
    """Chat model from your notes: tokenizer, training (pretrain -> SFT), chat."""


TokenizerOpt = Annotated[
    Path | None,
    typer.Option("--tokenizer", help="Tokenizer dir (default: $LMLAB_HOME/notes/tokenizer)."),
]
RoamOpt = Annotated[
    Path | None,
    typer.Option("--roam-dir", help="Roam markdown export (default: the shipped sample)."),
]
PrimerOpt = Annotated[
    Path | None, typer.Option("--primer", help="Primer dialogues (default: the shipped sample).")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for the splits and shuffles.")]


@notes_app.command("tokenizer")
def tokenizer_command(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output dir (default: $LMLAB_HOME/notes/tokenizer)."),
    ] = None,
    roam_dir: RoamOpt = None,
    primer: PrimerOpt = None,
    vocab_size: Annotated[
        int | None,
        typer.Option(
            "--vocab-size",
            min=1,
            help="Vocabulary size (default: 16000; 1024 on the shipped sample).",
        ),
    ] = None,
    fineweb_bytes: Annotated[
        int, typer.Option("--fineweb-bytes", min=0, help="Also read this much fineweb-edu text.")
    ] = 0,
    wikitext_bytes: Annotated[
        int, typer.Option("--wikitext-bytes", min=0, help="Also read this much wikitext-103.")
    ] = 0,
    include_wikitext: Annotated[
        bool, typer.Option("--include-wikitext", help="Same as --wikitext-bytes 20000000.")
    ] = False,
    fineweb_path: Annotated[
        Path | None, typer.Option("--fineweb-path", help="Local fineweb-edu (parquet/jsonl/txt).")
    ] = None,
    wikitext_path: Annotated[
        Path | None, typer.Option("--wikitext-path", help="Local wikitext-103 (parquet/jsonl/txt).")
    ] = None,
    seed: SeedOpt = 42,
    force: Annotated[bool, typer.Option("--force", help="Retrain over an existing one.")] = False,
) -> None:
    """Train the SentencePiece tokenizer (sys=3, usr=4, asst=5, eot=6) on cleaned notes and the
    primer's messages (+ optional public text). An existing tokenizer is kept unless --force.

    Example: lmlab notes tokenizer
    Example: lmlab notes tokenizer --roam-dir data/.roam-data --primer data/primer.txt --vocab-size 16000 --fineweb-bytes 20000000 --include-wikitext
    """
    import json

    from lmlab.studies.notes.tokenizer import TokenizerInputs, train_notes_tokenizer

    inputs = TokenizerInputs(
        roam_dir=roam_dir or SAMPLE_ROAM_DIR,
        primer=primer or SAMPLE_PRIMER,
        fineweb_bytes=fineweb_bytes,
        wikitext_bytes=wikitext_bytes or (20_000_000 if include_wikitext else 0),
        fineweb_path=fineweb_path,
        wikitext_path=wikitext_path,
        seed=seed,
    )
    out = out or default_tokenizer_dir()
    tok, trained = train_notes_tokenizer(inputs, out, vocab_size, force=force)
    verb = "saved" if trained else "kept the existing (use --force to retrain)"
    typer.echo(f"{verb} {tok.kind} tokenizer in {out}")
    typer.echo(f"  vocab size   {tok.vocab_size}")
    typer.echo(f"  hash         {tok.hash}")
    typer.echo(f"  special ids  {json.dumps(tok.special_ids)}")


@notes_app.command("train")
def train_command(
    phase: Annotated[
        str | None,
        typer.Option("--phase", help="pretrain | sft | pipeline (default: the profile's)."),
    ] = None,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    resume: ResumeOpt = True,
    init_from: Annotated[
        str | None,
        typer.Option("--init-from", help="SFT: start from this run/checkpoint."),
    ] = None,
    print_config: PrintConfigOpt = False,
    list_profiles: ListProfilesOpt = False,
) -> None:
    """Pretrain, SFT, or both (pipeline: SFT from the best pretrain checkpoint) on the notes
    caches, through the core training loop. Each run dir gets resolved_settings.json.

    Example: lmlab notes train --profile smoke-pretrain
    Example: lmlab notes train --phase pipeline --profile pipeline-dev --device cpu
    Example: lmlab notes train --phase sft --profile dev-sft --init-from runs/notes-dev-pretrain-1a2b3c4d
    """
    from lmlab.studies.notes.config import NotesConfig
    from lmlab.studies.notes.pipeline import run

    sets = list(set_ or [])
    if phase:
        sets.append(f"phase={phase}")
    if device:
        sets.append(f"device={device}")
    cfg = resolve_or_exit(
        NotesConfig,
        config=config,
        sets=sets,
        profile=profile,
        print_config=print_config,
        list_profiles=list_profiles,
        profile_dirs=C.profile_dirs("notes"),
    )
    results = run(cfg, cfg.phase, resume=resume, init_from=init_from)
    for r in results:
        typer.echo(r.line())


@notes_app.command("chat")
def chat_command(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Run dir (its best checkpoint) or ckpt.")],
    system: Annotated[str | None, typer.Option("--system", help="System prompt text.")] = None,
    system_file: Annotated[
        Path | None,
        typer.Option("--system-file", help="System prompt file (default: the notes persona)."),
    ] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="Answer this once and exit (else interactive).")
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option("--max-new-tokens", min=1, help="Reply cap (default: min(256, context/2))."),
    ] = None,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy.")] = 0.9,
    top_k: Annotated[int, typer.Option("--top-k", min=0, help="0 = off.")] = 50,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="1 = off.")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 42,
    device: DeviceOpt = "cpu",
) -> None:
    """Chat with a notes model: `lmlab chat` with the notes persona as the default system prompt
    (--system, else --system-file, else the persona). Replies stop at <|eot|>; role tokens are
    never generated; /reset clears the history.

    Example: lmlab notes chat --ckpt runs/notes-dev-sft-1a2b3c4d --prompt 'How do I feed Gus?'
    """
    from lmlab.model.cli import chat_command as core_chat
    from lmlab.studies.notes.chat import system_defaults

    system, system_file = system_defaults(system, system_file)
    core_chat(
        ckpt=ckpt,
        system=system,
        system_file=system_file,
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        kv_policy="full",
        kv_budget=1.0,
        device=device,
    )


@notes_app.command("paths")
def paths_command() -> None:
    """Print where the notes workflow reads and writes by default.

    Example: lmlab notes paths
    """
    from lmlab.studies.notes.paths import PERSONA_FILE

    for name, value in (
        ("sample roam export", SAMPLE_ROAM_DIR),
        ("sample primer", SAMPLE_PRIMER),
        ("persona (system prompt)", PERSONA_FILE),
        ("profiles", PROFILE_DIR),
        ("tokenizer", default_tokenizer_dir()),
        ("caches", default_cache_dir()),
    ):
        typer.echo(f"{name:24} {value}")
