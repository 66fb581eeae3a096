"""`lmlab sweep run FILE.yaml`: run a matrix of experiments and seeds, then summarise."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from lmlab.errors import LmlabError
from lmlab.paths import runs_root
from lmlab.runs.lock import acquire
from lmlab.runs.summary import write_summaries
from lmlab.runs.sweep import SweepInterrupted, SweepRunner, describe, load_sweep, plan

app = typer.Typer(
    help="Run sweeps of experiments × seeds over any lmlab command.", no_args_is_help=True
)


class Stdout:
    """typer.echo that survives a reader going away (`lmlab sweep run ... | head`): the sweep
    goes on and still writes its summaries; further output is dropped."""

    def __init__(self) -> None:
        self.closed = False

    def __call__(self, message: str = "") -> None:
        if self.closed:
            return
        try:
            typer.echo(message)
        except BrokenPipeError:
            self.closed = True
            # Python's advice: point stdout at devnull so the flush at exit does not fail too
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())


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
    lock = acquire(out, what="sweep folder")  # two sweeps in one folder would race each other
    echo = Stdout()
    runner = SweepRunner(spec, runs, echo=echo)
    stopped: SweepInterrupted | None = None
    try:
        runner.run(force=force, max_runs=max_runs, workers=workers)
    except SweepInterrupted as e:
        stopped = e
    csv_path, txt_path = write_summaries(spec, runs, out)  # first: stdout may be gone
    lock.release()
    echo(txt_path.read_text())
    echo(f"summaries: {csv_path} {txt_path}")
    if stopped is not None:
        done = sum(r.status == "done" for r in runs)
        typer.echo(
            f"sweep stopped by {signal.Signals(stopped.signum).name}: {done} of {len(runs)} "
            f"run(s) done; rerun the same command to finish the rest (see {txt_path})",
            err=True,
        )
        raise typer.Exit(128 + stopped.signum)
    unfinished = runner.failed + runner.interrupted
    if unfinished:
        raise LmlabError(
            f"{len(unfinished)} of {len(runs)} run(s) failed or are incomplete; see {txt_path}"
        )
