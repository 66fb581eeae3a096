"""`lmlab kvbench prepare|run|score|analyze|report|all|demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmlab.cli_common import ConfigOpt, SetOpt
from lmlab.errors import LmlabError

app = typer.Typer(
    help="KV-compression bench (seed 003): accuracy, latency and failures per length bin and "
    "KV budget, for several policies.",
    no_args_is_help=True,
)

ForceOpt = Annotated[bool, typer.Option("--force", help="Redo the stage even if up to date.")]


def _bench(config: Path | None, sets: list[str] | None):
    from lmlab.studies.kvbench.pipeline import Bench, load_config

    if config is None:
        raise LmlabError("give a config: -c configs/kvbench/sanity.yaml")
    return Bench(load_config(config, sets), source=str(config), echo=typer.echo)


def _stage(name: str):
    def command(config: ConfigOpt = None, sets: SetOpt = None, force: ForceOpt = False) -> None:
        bench = _bench(config, sets)
        bench.stage(name, force=force)

    command.__doc__ = {
        "prepare": "Load the dataset, bin prompts by engine tokens, sample, write the manifest.",
        "run": "Run every example under every policy x budget cell (resumable).",
        "score": "Score every response (metric + failure taxonomy).",
        "analyze": "Per-bin statistics, bootstrap CIs, transition points and plots.",
        "report": "Write report.md from the database.",
    }[name] + f"\n\nExample: lmlab kvbench {name} -c configs/kvbench/sanity.yaml"
    return command


for _name in ("prepare", "run", "score", "analyze", "report"):
    app.command(_name)(_stage(_name))


@app.command("all")
def all_command(config: ConfigOpt = None, sets: SetOpt = None, force: ForceOpt = False) -> None:
    """prepare -> run -> score -> analyze -> report, skipping stages that are up to date.

    Example: lmlab kvbench all -c configs/kvbench/sanity.yaml
    """
    bench = _bench(config, sets)
    bench.all(force=force)
    typer.echo(f"report: {bench.out / 'report.md'}")


@app.command("demo")
def demo_command(
    retrieval: Annotated[
        Path,
        typer.Option("--retrieval", help="The retrieval demo's folder (`lmlab demo --out`)."),
    ] = Path("runs/demo"),
    out: Annotated[Path | None, typer.Option("--out", help="Bench folder.")] = None,
    sets: SetOpt = None,
    force: ForceOpt = False,
) -> None:
    """The bench on the retrieval demo's baseline checkpoint and eval split (run `lmlab demo`
    first): policies full/snapkv/snapkv_w8/streamingllm/h2o/random x budgets 1/0.5/0.25/0.1,
    the answer cue ("A") fed after compression.

    Example: lmlab kvbench demo --retrieval runs/demo
    """
    from lmlab.studies.kvbench.demo import run_bench_demo

    report = run_bench_demo(retrieval, out, sets or [], force=force, echo=typer.echo)
    typer.echo(f"report: {report}")
