"""summary.csv and summary.txt of a sweep: a row per run, an aggregate row per experiment."""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from lmlab.paths import atomic_write_text
from lmlab.runs.sweep import PlannedRun, SweepSpec, column_values, resolved_values


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def build_rows(spec: SweepSpec, runs: list[PlannedRun]) -> tuple[list[str], list[dict]]:
    metrics = list(spec.metric_modes())
    fixed = ["row", "experiment", "seed", "n", "status", "run_id", "wall_s"]
    # the seed already has its column: a swept key named like a fixed column is not repeated
    swept = [k for k in dict.fromkeys(k for r in runs for k in r.overrides) if k not in fixed]
    extra = [c for c in spec.columns if c not in swept and c not in fixed]
    header = [*fixed, *swept, *extra]
    for m in metrics:
        header += [f"{m}_best", f"{m}_final"]
    for m in metrics:
        header += [f"{m}_best_std", f"{m}_final_std"]
    rows = []
    for r in runs:
        row = {
            "row": "run",
            "experiment": r.experiment,
            "seed": r.seed,
            "status": r.status,
            "run_id": r.run_dir.name,
            "wall_s": round(r.wall_s, 2),
            **resolved_values(r),
            **column_values(r, {c: spec.columns[c] for c in extra}),
        }
        for m in metrics:
            row[f"{m}_best"] = r.summary.get("best", {}).get(m)
            row[f"{m}_final"] = r.summary.get("final", {}).get(m)
        rows.append(row)
    for exp in dict.fromkeys(r.experiment for r in runs):
        done = [row for row in rows if row["experiment"] == exp and row["status"] == "done"]
        # n (runs averaged) has a column of its own, so `seed` stays numeric for a reader
        agg = {"row": "aggregate", "experiment": exp, "n": len(done), "status": "aggregate"}
        for c in extra:  # a column every run of the experiment agrees on describes the aggregate
            values = {repr(row.get(c)) for row in done}
            agg[c] = done[0].get(c) if len(values) == 1 else None
        for m in metrics:
            for kind in ("best", "final"):
                vals = [row[f"{m}_{kind}"] for row in done if row[f"{m}_{kind}"] is not None]
                mean, std = _mean_std(vals)
                agg[f"{m}_{kind}"], agg[f"{m}_{kind}_std"] = mean, std
        rows.append(agg)
    return header, rows


def write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _num(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def summary_text(spec: SweepSpec, runs: list[PlannedRun], rows: list[dict]) -> str:
    primary = spec.primary_metric
    mode = spec.metric_modes()[primary]
    lines = (
        [f"sweep: {spec.name}", spec.description, ""]
        if spec.description
        else [f"sweep: {spec.name}", ""]
    )
    scored = [r for r in rows if r["row"] == "run" and r.get(f"{primary}_best") is not None]
    scored.sort(key=lambda r: r[f"{primary}_best"], reverse=(mode == "max"))
    lines.append(f"top 3 by {primary} (best, {mode}):")
    for i, r in enumerate(scored[:3], 1):
        lines.append(
            f"  {i}. {r['experiment']} seed={r['seed']}: {_num(r[f'{primary}_best'])}"
            f"  ({r['run_id']})"
        )
    if not scored:
        lines.append("  (no run has this metric)")
    lines += ["", "averages over seeds (mean ± std of best values):"]
    for r in rows:
        if r["row"] != "aggregate":
            continue
        parts = [
            f"{m}={_num(r[f'{m}_best'])} ± {_num(r[f'{m}_best_std'])}" for m in spec.metric_modes()
        ]
        lines.append(f"  {r['experiment']} (n={r['n']}): " + ", ".join(parts))
    bad = [r for r in runs if r.status not in ("done",)]
    lines += ["", f"failed or incomplete runs: {len(bad)}"]
    for r in bad:
        lines.append(f"  {r.experiment} seed={r.seed}: {r.status} {r.note}".rstrip())
    lines += ["", "all runs:"]
    for r in runs:
        lines.append(f"  {r.status:<15} {r.experiment} seed={r.seed}  {r.run_dir}")
    return "\n".join(lines) + "\n"


def write_summaries(spec: SweepSpec, runs: list[PlannedRun], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    header, rows = build_rows(spec, runs)
    write_csv(out / "summary.csv", header, rows)
    atomic_write_text(out / "summary.txt", summary_text(spec, runs, rows))
    return out / "summary.csv", out / "summary.txt"
