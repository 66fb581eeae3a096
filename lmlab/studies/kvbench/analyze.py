"""`analyze`: per (policy, budget, bin) statistics, paired differences, transition points, plots.

Accuracy counts failures as 0 (`mean`, with its seeded 95% bootstrap CI) and is also given over
answered requests. Paired differences are per example, against the full cache (`full`) and
against the next larger budget of the same policy (`adjacent`), each with a bootstrap CI of the
mean difference. The transition point of a (policy, bin) is the largest budget whose drop against
the full cache has a CI above 0 and a mean above `analysis.threshold` (`paired_ci`); the seed's
rule (the largest budget whose mean drop exceeds `analysis.mean_drop`, no interval) sits beside it.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

from lmlab.runs.report import heatmap_grid, line_grid
from lmlab.runs.stats import bootstrap_ci, percentile, rng_for
from lmlab.studies.kvbench import db
from lmlab.studies.kvbench.config import KvbenchConfig
from lmlab.studies.kvbench.run import REFERENCE

PLOTS = ("acc_by_bin.png", "fail_by_bin.png", "latency_p50_by_bin.png", "acc_heatmap.png")


def load_cells(conn: sqlite3.Connection, run_ids: list[str]) -> list[dict]:
    """One row per request of the current runs: policy, budget, bin, example, score, telemetry."""
    marks = ",".join("?" for _ in run_ids)
    return db.rows(
        conn,
        "SELECT u.policy, u.budget, m.bin_id, q.example_id, s.score, s.answered, "
        "t.latency_s, t.kv_bytes_kept, t.kv_bytes_full, t.kv_retained, t.prompt_tokens "
        "FROM requests q JOIN runs u USING (run_id) JOIN scores s USING (request_id) "
        "LEFT JOIN telemetry t USING (request_id) "
        "JOIN manifest_entries m ON m.example_id = q.example_id "
        f"WHERE q.run_id IN ({marks})",  # noqa: S608
        tuple(run_ids),
    )


def _by(rows: list[dict], *keys) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _paired(a: dict[str, float], b: dict[str, float]) -> list[float]:
    return [a[e] - b[e] for e in sorted(a) if e in b]


def run_analyze(
    cfg: KvbenchConfig, conn: sqlite3.Connection, run_ids: list[str], out: Path
) -> dict:
    a = cfg.analysis
    rows = load_cells(conn, run_ids)
    cells = _by(rows, "policy", "budget", "bin_id")
    scores = {k: {r["example_id"]: r["score"] for r in v} for k, v in cells.items()}
    stats, diffs, transitions = [], [], []
    for (policy, budget, b), rs in sorted(cells.items()):
        vals = [r["score"] for r in rs]
        answered = [r["score"] for r in rs if r["answered"]]
        lo, hi = bootstrap_ci(vals, a.bootstrap, rng_for(a.seed, policy, budget, b))
        kept = [r["kv_bytes_kept"] for r in rs if r["kv_bytes_kept"] is not None]
        frac = [
            r["kv_bytes_kept"] / r["kv_bytes_full"]
            for r in rs
            if r["kv_bytes_kept"] is not None and r["kv_bytes_full"]
        ]
        stats.append(
            {
                "policy": policy,
                "budget": budget,
                "bin_id": b,
                "n": len(vals),
                "mean": float(np.mean(vals)),
                "ci_lo": lo,
                "ci_hi": hi,
                "n_answered": len(answered),
                "mean_answered": float(np.mean(answered)) if answered else None,
                "fail_rate": 1 - len(answered) / len(vals),
                "latency_p50": percentile([r["latency_s"] for r in rs], 50),
                "latency_p95": percentile([r["latency_s"] for r in rs], 95),
                "kv_bytes_kept": float(np.mean(kept)) if kept else None,
                "kv_fraction": float(np.mean(frac)) if frac else None,
            }
        )
    policies = sorted({p for p, _, _ in cells if p != "full"}) or ["full"]
    bins = sorted({b for _, _, b in cells})
    for policy in policies:
        budgets = sorted({bu for p, bu, _ in cells if p == policy}, reverse=True)
        for b in bins:
            ref = scores.get((*REFERENCE, b), {})
            first = {"paired_ci": None, "mean_drop": None}
            drops = {}
            for i, budget in enumerate(budgets):
                here = scores.get((policy, budget, b), {})
                refs = [("full", REFERENCE[1], ref)]
                if i > 0:
                    refs.append(
                        ("adjacent", budgets[i - 1], scores.get((policy, budgets[i - 1], b), {}))
                    )
                for name, ref_budget, other in refs:
                    d = _paired(here, other)
                    if not d:
                        continue
                    lo, hi = bootstrap_ci(d, a.bootstrap, rng_for(a.seed, policy, budget, b, name))
                    row = {
                        "policy": policy,
                        "bin_id": b,
                        "budget": budget,
                        "reference": name,
                        "ref_budget": ref_budget,
                        "n": len(d),
                        "diff": float(np.mean(d)),
                        "ci_lo": lo,
                        "ci_hi": hi,
                    }
                    diffs.append(row)
                    if name == "full":
                        drops[budget] = row
            for budget in budgets:  # largest budget first
                row = drops.get(budget)
                if row is None or budget >= 1.0:
                    continue
                drop = -row["diff"]
                if first["paired_ci"] is None and -row["ci_hi"] > 0 and drop > a.threshold:
                    first["paired_ci"] = row
                if first["mean_drop"] is None and drop > a.mean_drop:
                    first["mean_drop"] = row
            for rule, row in first.items():
                transitions.append(
                    {
                        "policy": policy,
                        "bin_id": b,
                        "rule": rule,
                        "transition_budget": row["budget"] if row else None,
                        "drop_mean": -row["diff"] if row else None,
                        "ci_lo": -row["ci_hi"] if row else None,
                        "ci_hi": -row["ci_lo"] if row else None,
                    }
                )
    with db.Tx(conn):
        db.clear(conn, "analyze")
        for table, items in (
            ("bin_stats", stats),
            ("paired_diffs", diffs),
            ("transition_summary", transitions),
        ):
            for item in items:
                db.insert(conn, table, item)
    plots = write_plots(stats, out / "plots", bins)
    return {"cells": len(stats), "plots": [str(p) for p in plots]}


def write_plots(stats: list[dict], plot_dir: Path, bins: list[int]) -> list[Path]:
    policies = sorted({s["policy"] for s in stats if s["policy"] != "full"}) or ["full"]
    ref = {s["bin_id"]: s for s in stats if (s["policy"], s["budget"]) == REFERENCE}
    labels = [str(b) for b in bins]

    def panels(key: str) -> dict:
        out = {}
        for p in policies:
            series, bands = {}, {}
            budgets = sorted({s["budget"] for s in stats if s["policy"] == p}, reverse=True)
            for bu in budgets:
                got = {s["bin_id"]: s for s in stats if s["policy"] == p and s["budget"] == bu}
                xs = [i for i, b in enumerate(bins) if b in got]
                series[f"budget {bu:g}"] = (xs, [got[bins[i]][key] for i in xs])
                if key == "mean":
                    bands[f"budget {bu:g}"] = (
                        [got[bins[i]]["ci_lo"] for i in xs],
                        [got[bins[i]]["ci_hi"] for i in xs],
                    )
            if p != "full" and ref:
                xs = [i for i, b in enumerate(bins) if b in ref]
                series["full cache"] = (xs, [ref[bins[i]][key] for i in xs])
            out[p] = (series, bands)
        return out

    specs = (  # (file, statistic, y label, y limits)
        (PLOTS[0], "mean", "accuracy", (-0.02, 1.02)),
        (PLOTS[1], "fail_rate", "failure rate", (-0.02, 1.02)),
        (PLOTS[2], "latency_p50", "latency p50 (s)", None),
    )
    paths = [
        line_grid(
            panels(key),
            plot_dir / name,
            xlabel="length bin",
            ylabel=ylabel,
            xticklabels=labels,
            ylim=ylim,
        )  # fmt: skip
        for name, key, ylabel, ylim in specs
    ]
    heat = {}
    for p in policies:
        budgets = sorted({s["budget"] for s in stats if s["policy"] == p})
        got = {(s["budget"], s["bin_id"]): s["mean"] for s in stats if s["policy"] == p}
        heat[f"{p} (rows: budget {', '.join(f'{b:g}' for b in budgets)})"] = [
            [got.get((bu, b), float("nan")) for b in bins] for bu in budgets
        ]
    paths.append(
        heatmap_grid(
            heat,
            plot_dir / PLOTS[3],
            xlabel="length bin",
            ylabel="budget (low to high)",
            vmin=0.0,
            vmax=1.0,
            cbar_label="accuracy",
        )
    )
    return paths


def summary_json(conn: sqlite3.Connection) -> str:
    return json.dumps(db.rows(conn, "SELECT * FROM transition_summary"), indent=1)
