"""The `lmlab` command: a root Typer app; each core group and each study mounts its sub-app."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from lmlab import __version__
from lmlab.errors import LmlabError

app = typer.Typer(
    help="lmlab: controlled experiments on small language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lmlab {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """lmlab: controlled experiments on small language models.

    Example: lmlab sweep run configs/sweeps/seeds.yaml --dry-run
    """


def _mount() -> None:
    from lmlab.data.cli import app as data_app
    from lmlab.interop.cli import export_command, import_command
    from lmlab.model.cli import chat_command, generate_command
    from lmlab.runs.cli import app as runs_app
    from lmlab.runs.sweep_cli import app as sweep_app
    from lmlab.serve.cli import serve_command
    from lmlab.text.cli import app as tokenizer_app
    from lmlab.train.cli import train_command

    app.command("train")(train_command)
    app.command("generate")(generate_command)
    app.command("chat")(chat_command)
    app.command("export")(export_command)
    app.command("import")(import_command)
    app.command("serve")(serve_command)
    app.add_typer(tokenizer_app, name="tokenizer")
    app.add_typer(data_app, name="data")
    app.add_typer(runs_app, name="runs")
    app.add_typer(sweep_app, name="sweep")
    _mount_studies()


def _mount_studies() -> None:
    """Each study owns a sub-app; only this file may import studies."""
    from lmlab.studies.distill.cli import app as distill_app
    from lmlab.studies.kvbench.cli import app as kvbench_app
    from lmlab.studies.notes.cache_cli import cache_app as notes_cache_app
    from lmlab.studies.notes.cli import notes_app
    from lmlab.studies.preference.cli import app as prefs_app
    from lmlab.studies.retrieval.cli import app as retrieval_app
    from lmlab.studies.retrieval.cli import demo as retrieval_demo

    app.add_typer(notes_cache_app, name="cache")
    app.add_typer(notes_app, name="notes")
    app.add_typer(retrieval_app, name="retrieval")
    app.add_typer(prefs_app, name="prefs")
    app.add_typer(kvbench_app, name="kvbench")
    app.add_typer(distill_app, name="distill")
    app.command("demo")(_chained_demo(retrieval_demo))


def _chained_demo(retrieval_demo):
    """`lmlab demo` (= `make demo`): the retrieval demo, then the KV bench on its baseline."""

    def demo(
        out: Annotated[
            Path, typer.Option("--out", help="Where the demo writes (default: runs/demo).")
        ] = Path("runs/demo"),
        fresh: Annotated[bool, typer.Option("--fresh", help="Delete OUT first.")] = False,
        kv_bench: Annotated[
            bool, typer.Option("--kv-bench/--no-kv-bench", help="Then the KV-compression bench.")
        ] = True,
    ) -> None:
        """The retrieval demo on CPU, then the KV-compression bench on its baseline checkpoint
        and eval split; the retrieval report links the bench's report.

        Example: lmlab demo
        """
        from lmlab.studies.kvbench.demo import link_reports, run_bench_demo

        retrieval_demo(out=out, fresh=fresh)
        if kv_bench:
            report = run_bench_demo(out, None, [], echo=typer.echo)
            link_reports(out / "report" / "report.md", report)
            typer.echo(f"kv bench report: {report}")

    return demo


_mount()


def _click_exit(e: BaseException) -> int | None:
    """Exit code for click's own exceptions, showing its usage message; None for anything else.

    Typer may vendor its own click, so they are recognised by shape, not by class.
    """
    name = type(e).__name__
    if name == "Abort":
        print("aborted", file=sys.stderr)
        return 130
    if hasattr(e, "exit_code") and hasattr(e, "show"):  # usage errors
        e.show()
        return e.exit_code
    if hasattr(e, "exit_code") and name == "Exit":
        return e.exit_code
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors and non-zero exits; tracebacks only with LMLAB_DEBUG=1."""
    debug = bool(os.environ.get("LMLAB_DEBUG"))
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=argv, prog_name="lmlab", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except LmlabError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # click's usage errors, else a bug: still one line unless debugging
        code = _click_exit(e)
        if code is not None:
            return code
        if debug:
            raise
        print(
            f"error: {type(e).__name__}: {e} (set LMLAB_DEBUG=1 for the traceback)", file=sys.stderr
        )
        return 1


def entry() -> None:
    sys.exit(main())
