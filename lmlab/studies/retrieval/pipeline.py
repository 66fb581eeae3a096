"""`lmlab retrieval pipeline`: generate -> train each scenario -> evaluate each -> compare.

Training and evaluation are two sweeps (lmlab.runs.sweep) over the scenarios, so a rerun skips
finished runs and `--dry-run` prints both plans. A training run's name carries its data's
fingerprint (split hash + tokenizer), so changed data retrains and unchanged data never does.

    DIR/runs/train/<scenario>-s<seed>-<hash>/   lmlab train run directories (+ summary.csv)
    DIR/runs/eval/<scenario>-s<seed>-<hash>/    lmlab retrieval eval run directories
    DIR/report/                                 the comparison report (a run directory)
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab import config as C
from lmlab.errors import LmlabError
from lmlab.paths import atomic_write_text
from lmlab.runs.rundir import read_status
from lmlab.runs.summary import write_summaries
from lmlab.runs.sweep import Experiment, PlannedRun, SweepRunner, SweepSpec, describe, plan
from lmlab.studies.retrieval.generate import (
    KV_MANIFEST,
    Generator,
    run_generate,
    split_dir_name,
)
from lmlab.studies.retrieval.spec import ExperimentSpec

DEFAULT_RECIPE = "kv-seed"


@dataclass
class PipelineOptions:
    out: Path
    spec: ExperimentSpec
    spec_source: str | None = None
    recipe: str | None = None  # a profile name (kv-seed, kv-demo, ...) or a YAML file
    train_iters: int | None = None
    train_sets: list[str] = field(default_factory=list)
    eval_sets: list[str] = field(default_factory=list)
    skip_train: bool = False
    skip_eval: bool = False
    force_data: bool = False
    dry_run: bool = False
    progress: bool = True
    seed: int = 0
    report_notes: str = ""  # extra markdown for the report (the demo's recipe notes)


def recipe_path(recipe: str | None) -> Path:
    """A recipe is a profile name (from any profile folder) or a YAML file."""
    name = recipe or DEFAULT_RECIPE
    path = Path(name)
    if path.suffix in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise LmlabError(f"recipe file not found: {path}")
        return path
    profiles = {n: p for n, _, p in C.list_profiles(C.profile_dirs())}
    if name not in profiles:
        raise LmlabError(f"unknown recipe {name!r} (profiles: {', '.join(sorted(profiles))})")
    return profiles[name]


def _sets_dict(sets: list[str], flag: str) -> dict[str, Any]:
    out = {}
    for expr in sets:
        key, value = C.parse_set(expr)
        if not key:
            raise LmlabError(f"{flag} {expr!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _round_up(n: int, k: int = 64) -> int:
    return k * math.ceil(n / k)


class Pipeline:
    def __init__(self, opts: PipelineOptions, echo: Callable[[str], None] = print):
        self.o, self.echo = opts, echo
        self.out = Path(opts.out).resolve()
        self.spec = opts.spec
        self.train_over = _sets_dict(opts.train_sets, "--train-set")
        if opts.train_iters is not None:
            if opts.train_iters < 1:
                raise LmlabError(f"--train-iters must be >= 1, got {opts.train_iters}")
            self.train_over["steps"] = opts.train_iters
        self.eval_over = _sets_dict(opts.eval_sets, "--eval-set")
        self.recipe = recipe_path(opts.recipe)
        self.gen = Generator(self.spec, self.out, progress=False)  # loads the words only
        self.failed: list[str] = []

    # ------------------------------------------------------------------ data
    def data(self) -> dict:
        kv_path = self.out / KV_MANIFEST
        if self.o.dry_run:
            state = "exists; reused where unchanged" if kv_path.exists() else "will be generated"
            self.echo(f"data: {self.out} ({state}; --force-data regenerates)")
            return json.loads(kv_path.read_text()) if kv_path.exists() else {}
        return run_generate(
            self.spec,
            self.out,
            force=self.o.force_data,
            progress=self.o.progress,
            spec_source=self.o.spec_source,
            echo=self.echo,
        )

    def _fingerprint(self, split_name: str) -> str:
        split = next(s for s in self.spec.splits if s.name == split_name)
        return self.gen.fingerprint(split)

    # ------------------------------------------------------------------ sweeps
    def recipe_data(self) -> dict:
        """The recipe file's contents (the runs get --train-set on top, as --set)."""
        data = C.load_file(self.recipe)
        data.setdefault("phase", "sft")  # sft shards: loss on the answers, one sample per row
        return data

    def check_context(self, kv: dict) -> None:
        """Refuse a context shorter than the longest sample (its answers would be cut off)."""
        data = C.apply_sets(
            self.recipe_data(), [f"{k}={C.json_inline(v)}" for k, v in self.train_over.items()]
        )
        seq_len = int(C.get_path(data, "model.seq_len", 256))
        need = int(kv.get("max_sample_tokens") or 0)
        if need > seq_len:
            raise LmlabError(
                f"the longest sample has {need} tokens but the recipe's model.seq_len is "
                f"{seq_len}: pass --train-set model.seq_len={_round_up(need)} (or fewer pairs)"
            )

    def train_sweep(self) -> tuple[SweepSpec, list[PlannedRun]]:
        base = self.out / "train_recipe.yaml"
        text = C.dump_yaml(self.recipe_data())
        exps = []
        for s in self.spec.scenarios:
            data_dir = self.out / split_dir_name(s, self.spec)
            sets = {
                "name": f"kv-{s.name}@{self._fingerprint(s.name)}",
                "data.sources": {str(data_dir): 1.0},
                "progress": False,
                **self.train_over,
            }
            exps.append(Experiment(name=s.name, set=sets))
        spec = SweepSpec(
            name=f"{self.spec.name}-train",
            command="lmlab train",
            base_config=str(base),
            seeds=[self.o.seed],
            experiments=exps,
            metrics=["val_loss"],
            retries=0,
        )
        if not self.o.dry_run:
            atomic_write_text(base, text)
            return spec, plan(spec, self.out, self.out / "runs" / "train")
        # a dry run writes nothing into DIR: plan from a temporary copy (run ids hash the
        # recipe's contents, not its path) and show the real path
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, base.name).write_text(text)
            runs = plan(
                spec.model_copy(update={"base_config": str(Path(tmp, base.name))}),
                self.out,
                self.out / "runs" / "train",
            )
            for r in runs:
                r.argv = [str(base) if a == str(Path(tmp, base.name)) else a for a in r.argv]
        return spec, runs

    def eval_sweep(self, train_runs: list[PlannedRun]) -> tuple[SweepSpec, list]:
        eval_dir = self.out / "eval"
        fp = self._fingerprint(self.spec.eval.name)
        exps = []
        for r in train_runs:
            sets = {
                "name": f"kv-eval-{r.experiment}@{fp}",
                "ckpt": str(r.run_dir),
                "data": str(eval_dir),
                "label": r.experiment,
                **self.eval_over,
            }
            exps.append(Experiment(name=r.experiment, set=sets))
        spec = SweepSpec(
            name=f"{self.spec.name}-eval",
            command="lmlab retrieval eval",
            seeds=[self.o.seed],
            experiments=exps,
            metrics=["accuracy"],
            retries=0,
        )
        return spec, plan(spec, self.out, self.out / "runs" / "eval")

    def _run_sweep(self, spec: SweepSpec, runs: list[PlannedRun], what: str) -> None:
        runner = SweepRunner(spec, runs, echo=self.echo)
        runner.run()
        write_summaries(spec, runs, runs[0].run_dir.parent)
        for r in runner.failed:
            self.echo(f"{what} {r.experiment}: {r.status} ({r.note})")
            self.failed.append(f"{what} {r.experiment}")

    # ------------------------------------------------------------------ the whole thing
    def run(self) -> Path | None:
        kv = self.data()
        train_spec, train_runs = self.train_sweep()
        eval_spec, eval_runs = self.eval_sweep(train_runs)
        if self.o.dry_run:
            for title, runs, skip in (
                ("train", train_runs, self.o.skip_train),
                ("eval", eval_runs, self.o.skip_eval),
            ):
                self.echo(f"{title}: {len(runs)} run(s){' (skipped)' if skip else ''}")
                for r in runs:
                    state = (read_status(r.run_dir) or {}).get("state", "pending")
                    self.echo(f"  {r.experiment} [{state}] -> {r.run_dir}")
                    self.echo(f"    {describe(r)}")
            self.echo(f"report: {self.out / 'report' / 'report.md'}")
            self.echo("dry run: nothing was run")
            return None
        if not self.o.skip_train:
            self.check_context(kv)
            self._run_sweep(train_spec, train_runs, "train")
        if not self.o.skip_eval:
            ready = [
                e
                for e, t in zip(eval_runs, train_runs, strict=True)
                if (read_status(t.run_dir) or {}).get("state") == "done"
            ]
            missing = len(eval_runs) - len(ready)
            if missing:
                self.echo(f"eval: {missing} scenario(s) have no finished training run; skipped")
            if ready:
                self._run_sweep(eval_spec, ready, "eval")
        from lmlab.studies.retrieval.compare import write_comparison

        report = write_comparison(
            self.out, self.spec, train_runs, eval_runs, self.recipe, self.o, echo=self.echo
        )
        if self.failed:
            raise LmlabError(
                f"{len(self.failed)} run(s) failed ({', '.join(self.failed)}); the report at "
                f"{report} covers the rest; rerun to retry only those"
            )
        return report


def run_pipeline(opts: PipelineOptions, echo: Callable[[str], None] = print) -> Path | None:
    return Pipeline(opts, echo).run()
