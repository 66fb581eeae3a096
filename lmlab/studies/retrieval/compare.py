"""The pipeline's comparison report: one table, accuracy by length and by key position (a line
per scenario, 95% Wilson bands), heatmaps side by side, learning curves and the expected effects.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl

from lmlab.paths import atomic_write_text
from lmlab.runs.report import Report, heatmap_grid, line_plot, md_table
from lmlab.runs.rundir import RunDir, read_metrics, read_status
from lmlab.runs.sweep import PlannedRun
from lmlab.studies.retrieval import buckets as B
from lmlab.studies.retrieval.evaluate import RESULTS, fmt_cell
from lmlab.studies.retrieval.generate import SAMPLES, split_dir_name
from lmlab.studies.retrieval.spec import ExperimentSpec

LENGTHS = [b[0] for b in B.LENGTH_BUCKETS]


def _results(run: PlannedRun) -> dict | None:
    path = run.run_dir / RESULTS
    if (read_status(run.run_dir) or {}).get("state") != "done" or not path.exists():
        return None
    return json.loads(path.read_text())


def _acc(cell: dict | None) -> float | None:
    return None if not cell or not cell.get("n") else cell["accuracy"]


def better_than(a: dict | None, b: dict | None) -> str:
    """'yes' when a's accuracy beats b's with disjoint 95% Wilson intervals, 'no' when it does
    not beat it at all, 'not significant' in between, '-' when a bucket is empty."""
    if _acc(a) is None or _acc(b) is None:
        return "-"
    if _acc(a) <= _acc(b):
        return "no"
    return "yes" if a["ci95"][0] > b["ci95"][1] else "not significant"


def expected_effects(res: dict[str, dict]) -> list[list[str]]:
    """The seed's hypotheses, checked on the measured numbers ('-' when a model is missing)."""

    def get(scn: str, group: str, bucket: str) -> dict | None:
        return (res.get(scn) or {}).get("summary", {}).get(group, {}).get(bucket)

    def pct(cell):
        a = _acc(cell)
        if a is None:
            return "-"
        lo, hi = cell["ci95"]
        return f"{100 * a:.1f}% [{100 * lo:.0f}, {100 * hi:.0f}] (n={cell['n']})"

    rows = []
    short = get("baseline_mixed", "by_length", "<=16")
    a = _acc(short)
    rows.append(
        [
            "baseline_mixed reaches >= 90% on <= 16 pairs",
            pct(short),
            "-" if a is None else ("yes" if a >= 0.9 else "no"),
        ]
    )
    for scn, better, worse in (
        ("front_key_bias", "front", "back"),
        ("end_key_bias", "back", "front"),
    ):
        hi, lo = get(scn, "by_position", better), get(scn, "by_position", worse)
        rows.append(
            [
                f"{scn}: {better} keys better than {worse} keys",
                f"{better} {pct(hi)} vs {worse} {pct(lo)}",
                better_than(hi, lo),
            ]
        )
    s_short = get("short_only", "by_length", "<=16")
    longer = [(b, get("short_only", "by_length", b)) for b in LENGTHS[1:]]
    longer = [(b, c) for b, c in longer if _acc(c) is not None]
    if longer:
        name, worst = min(longer, key=lambda bc: _acc(bc[1]))
        rows.append(
            [
                "short_only falls off on longer contexts",
                f"<=16 {pct(s_short)} vs {name} {pct(worst)}",
                better_than(s_short, worst),
            ]
        )
    return rows


def _bucket_plot(res, group, names, path, title, xlabel):
    series = {}
    for scn, r in res.items():
        cells = r["summary"][group]
        xs = [i for i, n in enumerate(names) if cells[n]["n"]]
        if xs:
            series[scn] = (
                xs,
                [cells[names[i]]["accuracy"] for i in xs],
                [cells[names[i]]["ci95"][0] for i in xs],
                [cells[names[i]]["ci95"][1] for i in xs],
            )
    if not series:
        return None
    used = sorted({x for xs, *_ in series.values() for x in xs})
    labels = names[: max(used) + 1]
    xy = {scn: (xs, ys) for scn, (xs, ys, _, _) in series.items()}
    bands = {scn: (lo, hi) for scn, (_, _, lo, hi) in series.items()}
    return line_plot(
        xy,
        path,
        title=title,
        xlabel=xlabel,
        ylabel="accuracy",
        bands=bands,
        xticklabels=labels,
        ylim=(-0.02, 1.02),
    )


def write_comparison(
    out: Path,
    spec: ExperimentSpec,
    train_runs: list[PlannedRun],
    eval_runs: list[PlannedRun],
    recipe: Path,
    opts,
    echo: Callable[[str], None] = print,
) -> Path:
    out = Path(out)
    cfg = {
        "experiment": spec.model_dump(mode="json"),
        "recipe": str(recipe),
        "train_sets": opts.train_sets,
        "eval_sets": opts.eval_sets,
        "train_iters": opts.train_iters,
        "runs": {r.experiment: str(r.run_dir) for r in eval_runs},
    }
    run = RunDir.create(cfg, name="kv-report", run_dir=out / "report")
    with run.running() as extra:
        res = {r.experiment: x for r in eval_runs if (x := _results(r)) is not None}
        rep = Report(f"Key-value retrieval: {spec.name}")
        rep.text(
            f"{spec.description}\n\nOne model per training distribution, all evaluated on one "
            f"mixed eval split ({spec.eval.min_pairs}-{spec.eval.max_pairs} pairs, uniform key "
            "position). The prompt shows the query (`Q <key>` then `A`); the prediction is the "
            "first generated word (greedy); exact match; 95% Wilson intervals."
        )
        if getattr(opts, "report_notes", ""):
            rep.text(opts.report_notes)
        _setup(rep, out, spec, recipe)
        _results_section(rep, run, res, spec)
        _curves(rep, run, train_runs)
        _runs_table(rep, train_runs, eval_runs)
        comparison = {
            "scenarios": {k: v["summary"] for k, v in res.items()},
            "expected_effects": expected_effects(res),
            "eval_runs": {r.experiment: str(r.run_dir) for r in eval_runs},
            "train_runs": {r.experiment: str(r.run_dir) for r in train_runs},
        }
        atomic_write_text(run.path / "comparison.json", json.dumps(comparison, indent=2) + "\n")
        for i, (scn, r) in enumerate(res.items()):
            run.log(i, scenario=scn, accuracy=r["summary"]["overall"]["accuracy"])
        rep.write(run.path / "report.md")
        extra["report"] = "report.md"
        if len(res) < len(eval_runs):
            missing = sorted({r.experiment for r in eval_runs} - set(res))
            echo(f"report: no finished evaluation for {', '.join(missing)}")
    echo(f"comparison report: {run.path / 'report.md'}")
    return run.path / "report.md"


def _setup(rep: Report, out: Path, spec: ExperimentSpec, recipe: Path) -> None:
    rows = []
    for s in spec.splits:
        train, val = spec.split_samples(s)
        rows.append(
            [
                split_dir_name(s, spec),
                f"{s.min_pairs}-{s.max_pairs}",
                "P(n) ∝ n" if s.pairs_weighting == "linear" else "uniform",
                f"[{s.query_position[0]:g}, {s.query_position[1]:g}]",
                s.queries_per_sample,
                f"{train} + {val} val" if val else f"{train} (eval)",
            ]
        )
    rep.section("Setup")
    rep.table(
        ["split", "pairs", "n distribution", "key position", "queries/sample", "samples"], rows
    )
    kv_path = out / "kv_manifest.json"
    if kv_path.exists():
        kv = json.loads(kv_path.read_text())
        leak = kv["leakage"]
        rep.text(
            f"Tokenizer: {kv['tokenizer']['kind']} ({kv['tokenizer']['vocab_size']} ids, hash "
            f"{kv['tokenizer']['hash']}). Leakage check: {leak['overlap_total']} of "
            f"{leak['eval_samples']} eval samples occur in a train split (by ordered pairs)."
        )
    rep.text(f"Training recipe (`{recipe}`, as run):\n\n```yaml\n{_recipe_text(out)}```")
    panels, extent = {}, None
    for s in spec.splits:
        path = out / split_dir_name(s, spec) / SAMPLES
        if path.exists():
            df = pl.read_parquet(path, columns=["num_pairs", "query_indices"])
            df = df.explode("query_indices")
            m, extent, _ = B.count_matrix(df["num_pairs"], df["query_indices"], spec.eval.max_pairs)
            panels[split_dir_name(s, spec)] = m
    if panels:
        img = heatmap_grid(
            panels,
            out / "report" / "plots" / "coverage.png",
            extent=extent,
            xlabel="number of pairs",
            ylabel="query index",
            cbar_label="queries",
        )
        rep.text("Coverage (asked keys per number of pairs and query index; axes fixed by eval):")
        rep.image(img, out / "report")


def _recipe_text(out: Path) -> str:
    path = out / "train_recipe.yaml"
    return path.read_text() if path.exists() else "(not written)\n"


def _results_section(rep: Report, run: RunDir, res: dict, spec: ExperimentSpec) -> None:
    rep.section("Results")
    if not res:
        rep.text("No finished evaluation yet.")
        return
    header = ["scenario", "overall"] + [f"pairs {b}" for b in LENGTHS] + list(B.POSITION_BUCKETS)
    rows = []
    for scn, r in res.items():
        cells = [r["summary"]["overall"]]
        cells += [r["summary"]["by_length"][b] for b in LENGTHS]
        cells += [r["summary"]["by_position"][b] for b in B.POSITION_BUCKETS]
        rows.append([scn] + [fmt_cell(c) for c in cells])
    first = next(iter(res.values()))["summary"]
    counts = [first["overall"]["n"]] + [first["by_length"][b]["n"] for b in LENGTHS]
    counts += [first["by_position"][b]["n"] for b in B.POSITION_BUCKETS]
    rows.append(["(eval samples)"] + counts)
    rep.text("Accuracy [95% Wilson interval]:")
    rep.table(header, rows)
    rep.section("Expected effects", level=3)
    rep.text(
        "'holds' is yes only when the 95% intervals do not overlap (not significant otherwise)."
    )
    rep.table(["hypothesis", "measured [95% CI]", "holds"], expected_effects(res))
    for group, names, title, fname in (
        ("by_length", LENGTHS, "accuracy by number of pairs", "acc_by_length.png"),
        (
            "by_position",
            list(B.POSITION_BUCKETS),
            "accuracy by key position",
            "acc_by_position.png",
        ),
    ):
        xlabel = "number of pairs" if group == "by_length" else "key position"
        img = _bucket_plot(res, group, names, run.plots / fname, title, xlabel)
        if img is not None:
            rep.image(img, run.path, title)
    panels = {}
    extent = None
    for scn, r in res.items():
        hm = r.get("accuracy_heatmap")
        if hm:
            panels[scn] = [[float("nan") if v is None else v for v in row] for row in hm["matrix"]]
            extent = tuple(hm["extent"])
    if panels:
        img = heatmap_grid(
            panels,
            run.plots / "accuracy_heatmaps.png",
            extent=extent,
            xlabel="number of pairs",
            ylabel="key position",
            cbar_label="exact match",
            vmin=0.0,
            vmax=1.0,
        )
        rep.text("Accuracy by number of pairs (x) and relative key position (y, 0 = first pair):")
        rep.image(img, run.path, "accuracy heatmaps")


def _curves(rep: Report, run: RunDir, train_runs: list[PlannedRun]) -> None:
    val, train = {}, {}
    for r in train_runs:
        rows = read_metrics(r.run_dir) if r.run_dir.exists() else []
        v = [(m["step"], m["val_loss"]) for m in rows if m.get("val_loss") is not None]
        t = [(m["step"], m["loss"]) for m in rows if m.get("loss") is not None]
        if v:
            val[r.experiment] = ([s for s, _ in v], [x for _, x in v])
        if t:
            train[r.experiment] = ([s for s, _ in t], [x for _, x in t])
    if not val and not train:
        return
    rep.section("Learning curves")
    rep.text(
        "Loss on the answer tokens only (nats). Chance is ln(vocabulary) before the model "
        "learns to copy from the context, ln(number of pairs) when it copies a random value."
    )
    if val:
        img = line_plot(
            val, run.plots / "val_loss.png", title="validation loss", xlabel="step", ylabel="nats"
        )
        rep.image(img, run.path, "validation loss")
    if train:
        img = line_plot(
            train, run.plots / "train_loss.png", title="training loss", xlabel="step", ylabel="nats"
        )
        rep.image(img, run.path, "training loss")
    rows = []
    for name, (steps, losses) in val.items():
        rows.append([name, steps[-1], losses[0], losses[-1], min(losses)])
    if rows:
        rep.table(["scenario", "steps", "first val loss", "final val loss", "best val loss"], rows)


def _runs_table(rep: Report, train_runs: list[PlannedRun], eval_runs: list[PlannedRun]) -> None:
    rep.section("Runs")
    rows = []
    for t, e in zip(train_runs, eval_runs, strict=True):
        ts, es = read_status(t.run_dir) or {}, read_status(e.run_dir) or {}
        rows.append(
            [
                t.experiment,
                ts.get("state", "pending"),
                ts.get("wall_s"),
                es.get("state", "pending"),
                f"`{t.run_dir}`",
                f"`{e.run_dir}`",
            ]
        )
    rep.text(
        md_table(["scenario", "train", "train s", "eval", "train run", "eval run"], rows) + "\n"
    )
    argv = shlex.join(["lmlab", *sys.argv[1:]]) if sys.argv else ""
    rep.text(f"Reproduce: `{argv}`")
