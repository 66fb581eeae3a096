"""`lmlab sweep run FILE.yaml`: run a matrix of experiments and seeds, then summarise."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmlab.errors import LmlabError
from lmlab.paths import runs_root
from lmlab.runs.summary import write_summaries
from lmlab.runs.sweep import SweepRunner, describe, load_sweep, plan

app = typer.Typer(
    help="Run sweeps of experiments × seeds over any lmlab command.", no_args_is_help=True
)


@app.command("run")
def run(
    file: Annotated[Path, typer.Argument(help="Sweep file (YAML).")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", "-d", help="Print the plan, run nothing.")
    ] = False,
    quick: Annotated[
        bool, typer.Option("--quick", "-q", help="Apply the sweep's quick overrides.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help="Rerun finished runs too.")] = False,
    max_runs: Annotated[int | None, typer.Option("--max-runs", help="Run at most N runs.")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Parallel local processes.")] = 1,
    only: Annotated[str | None, typer.Option("--only", help="Run one experiment by name.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Sweep folder (default: runs/sweeps/<name>).")
    ] = None,
) -> None:
    """Run every (experiment, seed) of a sweep; skip finished runs; write summary.csv/.txt.

    Example: lmlab sweep run configs/sweeps/smoke-seeds.yaml --quick --workers 2
    """
    spec, root = load_sweep(file)
    out = out or (Path(spec.out) if spec.out else runs_root() / "sweeps" / spec.name)
    runs = plan(spec, root, out, quick=quick, only=only)
    if dry_run:
        for r in runs:
            typer.echo(f"{r.experiment} seed={r.seed} -> {r.run_dir}")
            typer.echo(f"  {describe(r)}")
        typer.echo(f"{len(runs)} run(s); dry run: nothing was run")
        return
    if workers < 1:
        raise LmlabError(f"--workers must be >= 1, got {workers}")
    runner = SweepRunner(spec, runs, echo=typer.echo)
    runner.run(force=force, max_runs=max_runs, workers=workers)
    csv_path, txt_path = write_summaries(spec, runs, out)
    typer.echo(txt_path.read_text())
    typer.echo(f"summaries: {csv_path} {txt_path}")
    if runner.failed:
        raise LmlabError(
            f"{len(runner.failed)} of {len(runs)} run(s) failed or are incomplete; see {txt_path}"
        )
