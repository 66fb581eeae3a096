"""`lmlab retrieval generate|eval|pipeline` and the `lmlab demo` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmlab import config as C
from lmlab.cli_common import ConfigOpt, PrintConfigOpt, RunDirOpt, SetOpt, resolve_or_exit
from lmlab.errors import LmlabError

app = typer.Typer(
    help="Key-value retrieval study: generate data, evaluate checkpoints, run the pipeline.",
    no_args_is_help=True,
)

OutOpt = Annotated[Path, typer.Option("--out", help="Experiment folder (data, runs, report).")]
ScenariosOpt = Annotated[
    Path | None,
    typer.Option(
        "--scenarios", help="Experiment/scenario YAML (default: the seed's four scenarios)."
    ),
]
TrainSamplesOpt = Annotated[
    int | None, typer.Option("--train-samples", help="Samples per training split (incl. val).")
]
EvalSamplesOpt = Annotated[int | None, typer.Option("--eval-samples", help="Eval samples.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Experiment seed (random streams).")]
WordsOpt = Annotated[
    Path | None, typer.Option("--words", help="Word list file (one word a line) for keys/values.")
]
TokenizerOpt = Annotated[
    str | None, typer.Option("--tokenizer", help="bpe (trained on baseline_mixed) | word.")
]


def spec_sets(
    sets: list[str] | None,
    train_samples: int | None,
    eval_samples: int | None,
    seed: int | None,
    words: Path | None,
    tokenizer: str | None,
) -> list[str]:
    out = list(sets or [])
    if train_samples is not None:
        out.append(f"train_samples={train_samples}")
    if eval_samples is not None:
        out.append(f"eval_samples={eval_samples}")
    if seed is not None:
        out.append(f"seed={seed}")
    if words is not None:
        out += ["words.source=file", f"words.path={C.json_inline(str(words))}"]
    if tokenizer is not None:
        out.append(f"tokenizer.kind={tokenizer}")
    return out


@app.command("generate")
def generate_cmd(
    out: OutOpt,
    train_samples: TrainSamplesOpt = None,
    eval_samples: EvalSamplesOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Regenerate existing splits.")] = False,
    seed: SeedOpt = None,
    scenarios: ScenariosOpt = None,
    words: WordsOpt = None,
    tokenizer: TokenizerOpt = None,
    set_: SetOpt = None,
    print_config: PrintConfigOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Generate every scenario's training split and the mixed eval split (shards, parquet
    samples, manifests, coverage heatmaps) and DIR/kv_manifest.json.

    Example: lmlab retrieval generate --out runs/kv/exp1 --train-samples 50000 --eval-samples 10000
    Example: lmlab retrieval generate --out runs/kv/mine --scenarios my_scenarios.yaml --tokenizer word
    """
    from lmlab.studies.retrieval.generate import run_generate
    from lmlab.studies.retrieval.spec import load_spec

    sets = spec_sets(set_, train_samples, eval_samples, seed, words, tokenizer)
    spec = load_spec(scenarios, sets)
    if print_config:
        typer.echo(C.dump_yaml(spec), nl=False)
        raise typer.Exit(0)
    kv = run_generate(spec, out, force=force, progress=not quiet, spec_source=scenarios)
    leak = kv["leakage"]
    typer.echo(
        f"wrote {out}/kv_manifest.json: {len(kv['splits'])} splits, eval overlap with train "
        f"= {leak['overlap_total']} of {leak['eval_samples']}"
    )


@app.command("eval")
def eval_cmd(
    ckpt: Annotated[
        str | None, typer.Option("--ckpt", help="Training run (or checkpoint) directory.")
    ] = None,
    data: Annotated[str | None, typer.Option("--data", help="Eval split dir (DIR/eval).")] = None,
    manifest: Annotated[
        str | None, typer.Option("--manifest", help="DIR/kv_manifest.json instead of --data.")
    ] = None,
    max_samples: Annotated[
        int | None, typer.Option("--max-samples", help="Evaluate at most N samples.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Prompts per batch.")
    ] = None,
    label: Annotated[str | None, typer.Option("--label", help="Name in the report.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Exact-match retrieval accuracy of a checkpoint, overall and by length and key position
    (95% Wilson intervals); writes results.json, report.md and an accuracy heatmap.

    Example: lmlab retrieval eval --ckpt runs/train-1a2b3c4d --data runs/kv/exp1/eval
    Example: lmlab retrieval eval --ckpt RUN --manifest runs/kv/exp1/kv_manifest.json --max-samples 2000
    """
    from lmlab.studies.retrieval.evaluate import EvalConfig, evaluate

    sets = list(set_ or [])
    for key, value in (
        ("ckpt", ckpt),
        ("data", data),
        ("manifest", manifest),
        ("max_samples", max_samples),
        ("batch_size", batch_size),
        ("label", label),
    ):
        if value is not None:
            sets.append(f"{key}={C.json_inline(value)}")
    cfg = resolve_or_exit(
        EvalConfig, config=config, sets=sets, profile=None, print_config=print_config
    )
    evaluate(cfg, run_dir=run_dir, echo=typer.echo)


@app.command("pipeline")
def pipeline_cmd(
    out: OutOpt,
    train_samples: TrainSamplesOpt = None,
    eval_samples: EvalSamplesOpt = None,
    train_iters: Annotated[
        int | None, typer.Option("--train-iters", help="Training steps per scenario.")
    ] = None,
    skip_train: Annotated[bool, typer.Option("--skip-train", help="Do not train.")] = False,
    skip_eval: Annotated[bool, typer.Option("--skip-eval", help="Do not evaluate.")] = False,
    force_data: Annotated[
        bool, typer.Option("--force-data", help="Regenerate the data even if it exists.")
    ] = False,
    train_set: Annotated[
        list[str] | None,
        typer.Option("--train-set", help="Override for every training run: k=v (repeatable)."),
    ] = None,
    eval_set: Annotated[
        list[str] | None,
        typer.Option("--eval-set", help="Override for every evaluation: k=v (repeatable)."),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option("--recipe", help="Training config: a profile name or YAML file."),
    ] = None,
    scenarios: ScenariosOpt = None,
    seed: SeedOpt = None,
    words: WordsOpt = None,
    tokenizer: TokenizerOpt = None,
    set_: SetOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", "-d", help="Print the plan, run nothing.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Generate -> tokenizer -> one training run per scenario -> evaluation of each on the
    mixed eval split -> one comparison report. Built on sweeps: a rerun skips finished runs.

    Example: lmlab retrieval pipeline --out runs/kv/exp1 --train-samples 50000 --eval-samples 10000 --train-iters 1000
    Example: lmlab retrieval pipeline --out runs/kv/exp1 --train-samples 50000 --eval-samples 10000 --dry-run
    """
    from lmlab.studies.retrieval.pipeline import PipelineOptions, run_pipeline
    from lmlab.studies.retrieval.spec import load_spec

    spec = load_spec(
        scenarios, spec_sets(set_, train_samples, eval_samples, seed, words, tokenizer)
    )
    opts = PipelineOptions(
        out=out,
        spec=spec,
        spec_source=str(scenarios) if scenarios else None,
        recipe=recipe,
        train_iters=train_iters,
        train_sets=list(train_set or []),
        eval_sets=list(eval_set or []),
        skip_train=skip_train,
        skip_eval=skip_eval,
        force_data=force_data,
        dry_run=dry_run,
        progress=not quiet,
    )
    run_pipeline(opts, echo=typer.echo)


def demo(
    out: Annotated[
        Path, typer.Option("--out", help="Where the demo writes (default: runs/demo).")
    ] = Path("runs/demo"),
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete OUT first.")] = False,
) -> None:
    """The retrieval demo on CPU: data, four small models, evaluation, comparison report.

    Example: lmlab demo
    """
    from lmlab.studies.retrieval.demo import run_demo

    if out.exists() and fresh:
        import shutil

        shutil.rmtree(out)
    report = run_demo(out, echo=typer.echo)
    if report is None:
        raise LmlabError("the demo produced no report")
    typer.echo(f"report: {report}")
