"""Options shared by every command that takes a config: -c, --set, --profile, --print-config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from lmlab import config as C

M = TypeVar("M", bound=BaseModel)

ConfigOpt = Annotated[Path | None, typer.Option("-c", "--config", help="YAML or JSON config file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a key: --set optim.lr=3e-4 (repeatable; YAML values)."),
]
ProfileOpt = Annotated[str | None, typer.Option("--profile", help="Named profile to start from.")]
PrintConfigOpt = Annotated[
    bool, typer.Option("--print-config", help="Print the resolved config and exit.")
]
ListProfilesOpt = Annotated[
    bool, typer.Option("--list-profiles", help="List the shipped profiles and exit.")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | mps.")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume/--no-resume", help="Continue from the run's latest checkpoint.")
]
RunDirOpt = Annotated[
    Path | None,
    typer.Option("--run-dir", help="Exact run directory (default: <runs>/<name>-<hash8>)."),
]

console = Console()
err_console = Console(stderr=True)


def print_profiles(dirs: list[Path] | None = None) -> None:
    """Every profile with its whole description, wrapped to the terminal (never cut)."""
    table = Table("profile", "description", box=None)
    table.columns[0].no_wrap = True
    table.columns[1].overflow = "fold"
    for name, desc, _ in C.list_profiles(dirs):
        table.add_row(name, desc)
    console.print(table)


def config_yaml(cfg: BaseModel) -> str:
    """The resolved config as YAML, saying which values the run replaces when it starts."""
    text = C.dump_yaml(cfg)
    if hasattr(getattr(cfg, "model", None), "vocab_size"):
        text = re.sub(
            r"^(  vocab_size: .*)$",
            r"\1  # replaced by the tokenizer's vocabulary size when the run starts",
            text,
            count=1,
            flags=re.MULTILINE,
        )
    return text


def resolve_or_exit(
    model_cls: type[M],
    *,
    config: Path | None,
    sets: list[str] | None,
    profile: str | None,
    print_config: bool = False,
    list_profiles: bool = False,
    base: dict | None = None,
    profile_dirs: list[Path] | None = None,
) -> M:
    """Resolve a config from CLI options; handle --list-profiles / --print-config (then exit 0)."""
    if list_profiles:
        print_profiles(profile_dirs)
        raise typer.Exit(0)
    cfg = C.resolve(
        model_cls,
        profile=profile,
        config=config,
        sets=sets or (),
        base=base,
        profile_dirs=profile_dirs,
    )
    if print_config:
        typer.echo(config_yaml(cfg), nl=False)
        raise typer.Exit(0)
    return cfg
