"""`lmlab runs ls|show`: look at run directories."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lmlab.cli_common import console
from lmlab.errors import LmlabError
from lmlab.paths import runs_root
from lmlab.runs.rundir import find_runs, read_metrics, read_status, run_state

app = typer.Typer(help="Inspect run directories.", no_args_is_help=True)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _key_metrics(status: dict | None, limit: int = 3) -> str:
    if not status:
        return ""
    final = status.get("final") or {}
    keys = sorted(final, key=lambda k: (not any(s in k for s in ("val", "acc", "loss")), k))
    return "  ".join(f"{k}={final[k]:.4g}" for k in keys[:limit])


@app.command("ls")
def ls(
    root: Annotated[Path | None, typer.Argument(help="Folder to search (default: ./runs).")] = None,
) -> None:
    """List run directories: run, state, key metrics, age.

    Example: lmlab runs ls runs/
    """
    root = root or runs_root()
    if not root.exists():
        raise LmlabError(f"no such folder: {root}")
    table = Table("run", "state", "metrics", "age", box=None)
    runs = find_runs(root)
    for path in runs:
        status = read_status(path)
        age = time.time() - (path / "config.yaml").stat().st_mtime
        state = run_state(path)
        color = {"done": "green", "failed": "red"}.get(state, "yellow")
        table.add_row(
            str(path.relative_to(root)) if path != root else path.name,
            f"[{color}]{state}[/{color}]",
            _key_metrics(status),
            _age(age),
        )
    console.print(table)
    console.print(f"{len(runs)} run(s) under {root}")


@app.command("show")
def show(run: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Show a run's status, config and last metrics.

    Example: lmlab runs show runs/smoke-1a2b3c4d
    """
    if not (run / "config.yaml").exists():
        raise LmlabError(f"not a run directory: {run} (no config.yaml)")
    console.rule(str(run))
    status = read_status(run)
    console.print(f"state: {run_state(run)}")
    if status:
        for key in ("started", "finished", "wall_s", "git_commit", "error"):
            if status.get(key) is not None:
                console.print(f"{key}: {status[key]}")
        console.print("final: " + json.dumps(status.get("final", {})))
        console.print("best:  " + json.dumps(status.get("best", {})))
    rows = read_metrics(run)
    console.print(f"metrics rows: {len(rows)}")
    for row in rows[-3:]:
        console.print("  " + json.dumps(row, default=str))
    console.rule("config.yaml")
    console.print((run / "config.yaml").read_text(), markup=False)
