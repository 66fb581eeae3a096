"""`report`: report.md from the database: config, per-cell tables, plots, transition summary, what
each policy kept, and a "budgets verified" line per run."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from lmlab import config as C
from lmlab.runs.report import Report
from lmlab.studies.kvbench import db
from lmlab.studies.kvbench.analyze import PLOTS
from lmlab.studies.kvbench.config import KvbenchConfig

POLICY_NOTES = {
    "full": "every prompt position (the reference)",
    "snapkv": "the observation window (last W prompt tokens) plus the earlier positions its "
    "queries attend to most (pooled), per KV head",
    "streamingllm": "the first few positions (attention sinks) plus the most recent ones",
    "h2o": "the most recent half plus the earlier positions with the most accumulated attention",
    "random": "uniformly random positions (seeded), the control",
}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _ci(lo, hi) -> str:
    return "-" if lo is None else f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def write_report(
    cfg: KvbenchConfig, conn: sqlite3.Connection, run_ids: list[str], out: Path, source: str
) -> Path:
    ds = db.rows(conn, "SELECT * FROM datasets")[0]
    bins = db.rows(conn, "SELECT * FROM bins ORDER BY bin_id")
    stats = db.rows(conn, "SELECT * FROM bin_stats ORDER BY policy, budget DESC, bin_id")
    trans = db.rows(conn, "SELECT * FROM transition_summary ORDER BY policy, bin_id, rule")
    marks = ",".join("?" for _ in run_ids)
    runs = db.rows(
        conn,
        f"SELECT * FROM runs WHERE run_id IN ({marks}) ORDER BY policy, budget DESC",  # noqa: S608
        tuple(run_ids),
    )
    fails = db.rows(
        conn,
        "SELECT f.error_type, COUNT(*) AS n FROM failures f JOIN requests q USING (request_id) "
        f"WHERE q.run_id IN ({marks}) GROUP BY f.error_type ORDER BY n DESC",  # noqa: S608
        tuple(run_ids),
    )
    unit = ds["length_unit"]
    r = Report(f"KV-compression bench: {cfg.exp_group_id}")
    r.text(
        f"{cfg.description}\n\nDataset `{ds['dataset_id']}` ({ds['source']}), metric "
        f"`{ds['metric']}`, {ds['max_new_tokens']} new tokens at most; engine `{runs[0]['engine']}` "
        f"on `{runs[0]['model']}`. Config: `{source}` (resolved copy: `config.yaml`). Database: "
        f"`{db.DB_NAME}` (every request, response, score and statistic)."
    )
    r.section("Bins", f"Prompt length in engine {unit} (after truncation to the context).")
    r.table(
        ["bin", f"{unit}", "available", "sampled"],
        [[b["bin_id"], f"{b['lo']}-{b['hi']}", b["n_available"], b["n_sampled"]] for b in bins],
    )
    r.section("Budgets verified", "One line per run (cell of the grid). " + suffix_line(cfg))
    r.text("\n".join(f"- `{u['policy']}` @ {u['budget']:g}: {u['verified']}" for u in runs))
    r.section(
        "Accuracy by policy, budget and bin",
        "Accuracy in % (failures count 0) with its 95% bootstrap CI; `answered` is the accuracy "
        "over answered requests; latency in ms; KV kept is the mean fraction of the prompt's KV "
        "bytes kept.",
    )
    r.table(
        [
            "policy",
            "budget",
            "bin",
            "n",
            "accuracy",
            "95% CI",
            "answered",
            "fail %",
            "p50 ms",
            "p95 ms",
            "KV kept",
        ],
        [
            [
                s["policy"],
                f"{s['budget']:g}",
                s["bin_id"],
                s["n"],
                _pct(s["mean"]),
                _ci(s["ci_lo"], s["ci_hi"]),
                _pct(s["mean_answered"]),
                _pct(s["fail_rate"]),
                f"{1000 * s['latency_p50']:.1f}" if s["latency_p50"] == s["latency_p50"] else "-",
                f"{1000 * s['latency_p95']:.1f}" if s["latency_p95"] == s["latency_p95"] else "-",
                "-" if s["kv_fraction"] is None else f"{s['kv_fraction']:.2f}",
            ]
            for s in stats
        ],
    )
    r.section(
        "Overall (all bins)",
        overall_text(conn, run_ids, cfg.analysis.bootstrap, cfg.analysis.seed),
    )
    r.section(
        "Policies against each other at equal budget (paired)",
        "Mean per-example difference in accuracy points (row policy minus column policy, same "
        "examples) with its 95% bootstrap CI; all bins together.",
    )
    r.text(policy_pairs_text(conn, run_ids, cfg.analysis.bootstrap, cfg.analysis.seed))
    r.section("Plots")
    for name in PLOTS:
        path = out / "plots" / name
        if path.exists():
            r.image(path, out, name.removesuffix(".png"))
    r.section(
        "Transition summary",
        f"`paired_ci`: the largest budget whose paired drop against the full cache has a 95% CI "
        f"above 0 and a mean above {cfg.analysis.threshold:g}; `mean_drop` (the seed's rule): the "
        f"largest budget whose mean drop exceeds {cfg.analysis.mean_drop:g}. Drops in points of "
        "accuracy; '-' = no transition within the grid.",
    )
    r.table(
        ["policy", "bin", "rule", "transition budget", "drop", "95% CI"],
        [
            [
                t["policy"],
                t["bin_id"],
                t["rule"],
                "-" if t["transition_budget"] is None else f"{t['transition_budget']:g}",
                _pct(t["drop_mean"]),
                _ci(t["ci_lo"], t["ci_hi"]),
            ]
            for t in trans
        ],
    )
    r.section("What each policy kept")
    r.text("\n".join(kept_lines(conn, run_ids, cfg)))
    r.section(
        "Outputs against the full cache",
        "Share of examples whose output equals the full cache's: the whole text, and its first "
        "word. "
        + (
            "The suffix is prefilled after compression, so the first generated token reads the "
            "compressed cache too."
            if cfg.generation.kv_suffix
            else "The policies run after the whole prompt's prefill (kv_suffix 0), so the first "
            "generated token always comes from the full prompt; a budget can only change what "
            "follows it."
        ),
    )
    r.text(agreement_text(conn, run_ids))
    r.section(
        "Failures",
        ", ".join(f"{f['error_type']}: {f['n']}" for f in fails) or "none",
    )
    r.section("Config")
    r.text("```yaml\n" + C.dump_yaml(cfg) + "```")
    return r.write(out / "report.md")


def run_rows(conn: sqlite3.Connection, run_ids: list[str], cols: str, table: str) -> list[dict]:
    """policy, budget and `cols` of every request of the runs, joined with `table` on request."""
    marks = ",".join("?" for _ in run_ids)
    return db.rows(
        conn,
        f"SELECT u.policy, u.budget, {cols} FROM requests q JOIN runs u USING (run_id) "
        f"JOIN {table} USING (request_id) WHERE q.run_id IN ({marks})",  # noqa: S608
        tuple(run_ids),
    )


def overall_text(conn: sqlite3.Connection, run_ids: list[str], n_boot: int, seed: int) -> str:
    """Mean accuracy per (policy, budget) over every example, with the paired difference to full."""
    from lmlab.runs.stats import bootstrap_ci, rng_for

    rows = run_rows(conn, run_ids, "q.example_id, s.score", "scores s")
    cells: dict = {}
    for x in rows:
        cells.setdefault((x["policy"], x["budget"]), {})[x["example_id"]] = x["score"]
    ref = cells.get(("full", 1.0), {})
    lines = [
        "| policy | budget | n | accuracy % [95% CI] | vs full cache, paired [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for (p, b), sc in sorted(cells.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        vals = list(sc.values())
        lo, hi = bootstrap_ci(vals, n_boot, rng_for(seed, p, b, "overall"))
        d = [sc[e] - ref[e] for e in sc if e in ref]
        dlo, dhi = bootstrap_ci(d, n_boot, rng_for(seed, p, b, "overall-diff"))
        mean_d = sum(d) / len(d) if d else float("nan")
        lines.append(
            f"| {p} | {b:g} | {len(vals)} | {100 * sum(vals) / len(vals):.1f} "
            f"[{100 * lo:.1f}, {100 * hi:.1f}] | {100 * mean_d:+.1f} [{100 * dlo:+.1f}, "
            f"{100 * dhi:+.1f}] |"
        )
    return "\n".join(lines)


def suffix_line(cfg: KvbenchConfig) -> str:
    mode = cfg.generation.kv_suffix
    if not mode:
        return "kv_suffix 0: the whole prompt is prefilled, then compressed."
    what = {"answer_cue": "the prompt's last line", "question": "the question part"}.get(
        mode, f"the last {mode} prompt tokens"
    )
    return (
        f"kv_suffix `{mode}`: {what} is prefilled after compression and kept whole, so the "
        "expected retained KV is ceil(budget x (prompt - suffix)) + suffix."
    )


def policy_note(label: str, cfg: KvbenchConfig) -> str:
    base, options = cfg.grid.resolve(label)
    note = POLICY_NOTES.get(base, "as the engine defines it")
    if label in cfg.grid.variants:
        over = ", ".join(f"{k}={v}" for k, v in cfg.grid.variants[label].overrides().items())
        note = f"(the `{base}` policy with {over or 'its defaults'}) {note}"
    return note


def policy_pairs_text(conn: sqlite3.Connection, run_ids: list[str], n_boot: int, seed: int) -> str:
    """Every pair of compressed policies at every budget < 1 they share: the paired difference."""
    from itertools import combinations

    from lmlab.runs.stats import bootstrap_ci, rng_for

    cells: dict = {}
    for x in run_rows(conn, run_ids, "q.example_id, s.score", "scores s"):
        cells.setdefault((x["policy"], x["budget"]), {})[x["example_id"]] = x["score"]
    lines = ["| budget | policy A | policy B | n | A - B [95% CI] |", "|---|---|---|---|---|"]
    for b in sorted({b for _, b in cells if b < 1.0}, reverse=True):
        policies = sorted(p for p, bb in cells if bb == b and p != "full")
        for a, c in combinations(policies, 2):
            common = [e for e in cells[(a, b)] if e in cells[(c, b)]]
            if not common:
                continue
            d = [cells[(a, b)][e] - cells[(c, b)][e] for e in common]
            lo, hi = bootstrap_ci(d, n_boot, rng_for(seed, a, c, b, "pair"))
            lines.append(
                f"| {b:g} | {a} | {c} | {len(d)} | {100 * sum(d) / len(d):+.1f} "
                f"[{100 * lo:+.1f}, {100 * hi:+.1f}] |"
            )
    return "\n".join(lines) if len(lines) > 2 else "(fewer than two compressed policies)"


def kept_lines(conn: sqlite3.Connection, run_ids: list[str], cfg: KvbenchConfig) -> list[str]:
    rows = run_rows(conn, run_ids, "t.kv_retained, t.prompt_tokens", "telemetry t")
    seen: dict = {}
    for x in rows:
        kept = json.loads(x["kv_retained"]) if x["kv_retained"] else None
        if kept and x["prompt_tokens"]:
            seen.setdefault((x["policy"], x["budget"]), []).append(
                sum(kept) / len(kept) / x["prompt_tokens"]
            )
    out = []
    for policy in sorted({p for p, _ in seen} | {p for p in POLICY_NOTES if (p, 1.0) in seen}):
        fracs = ", ".join(
            f"{b:g} -> {sum(v) / len(v):.2f}"
            for (p, b), v in sorted(seen.items(), key=lambda kv: -kv[0][1])
            if p == policy
        )
        note = policy_note(policy, cfg)
        out.append(f"- `{policy}` keeps {note}. Mean fraction of prompt positions kept: {fracs}.")
    return out or ["- the engine reported no retained KV (budgets unverified)"]


def agreement_text(conn: sqlite3.Connection, run_ids: list[str]) -> str:
    rows = run_rows(conn, run_ids, "q.example_id, r.text", "responses r")
    texts: dict = {}
    for x in rows:
        texts.setdefault((x["policy"], x["budget"]), {})[x["example_id"]] = x["text"] or ""
    ref = texts.get(("full", 1.0), {})

    def first(t: str) -> str:
        return (t.split() or [""])[0]

    lines = ["| policy | budget | n | same text % | same first word % |", "|---|---|---|---|---|"]
    for (p, b), outs in sorted(texts.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        common = [e for e in outs if e in ref]
        if p == "full" or not common:
            continue
        same = sum(outs[e] == ref[e] for e in common) / len(common)
        same_first = sum(first(outs[e]) == first(ref[e]) for e in common) / len(common)
        lines.append(f"| {p} | {b:g} | {len(common)} | {100 * same:.1f} | {100 * same_first:.1f} |")
    return "\n".join(lines)
