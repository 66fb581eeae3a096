"""`run`: every sampled example under every cell of the policy x budget grid (paired).

The full cache (policy `full`, budget 1.0) is always in the grid: it is the reference every
difference is measured against; `full` runs only at 1.0 (a budget does not apply to it). A cell is
a row of `runs` (run_id = <policy>@<budget>-<grid hash>); each request's request, response and
telemetry rows are written in one transaction, so a killed run resumes where it stopped.

After the grid, each run's budget is checked: verified when the engine reported the KV it kept
and that matches ceil(budget x (prompt - suffix)) + suffix, the suffix being the prompt tokens
prefilled after compression and kept whole (`generation.kv_suffix`; 0 by default) (a server may keep more for its own reasons: "applied" when
it kept fewer than the prompt), unverified when nothing was reported. When every output at every
budget < 1 equals the output at 1.0 on every example, the budgets had no effect and the run fails.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable

from lmlab.config import config_hash
from lmlab.errors import LmlabError
from lmlab.model.kv_policies import kept_length
from lmlab.studies.kvbench import db
from lmlab.studies.kvbench.config import KvbenchConfig
from lmlab.studies.kvbench.engines import BenchEngine, Item

REFERENCE = ("full", 1.0)


def grid_cells(cfg: KvbenchConfig) -> list[tuple[str, float]]:
    cells = [REFERENCE]
    for policy in cfg.grid.policies:
        for budget in [1.0] if policy == "full" else cfg.grid.budgets:
            if (policy, budget) not in cells:
                cells.append((policy, budget))
    return cells


def grid_hash(cfg: KvbenchConfig, engine: BenchEngine, prepare_hash: str) -> str:
    return config_hash(
        {
            "engine": cfg.engine.model_dump(mode="json"),
            "model": engine.model_id(),
            "generation": cfg.generation.model_dump(mode="json"),
            "options": cfg.grid.options.model_dump(mode="json"),
            "prepare": prepare_hash,
        }
    )


def run_id(policy: str, budget: float, ghash: str) -> str:
    return f"{policy}@{budget:g}-{ghash}"


def current_runs(conn: sqlite3.Connection, cfg: KvbenchConfig, ghash: str) -> list[dict]:
    wanted = {run_id(p, b, ghash) for p, b in grid_cells(cfg)}
    return [
        r
        for r in db.rows(conn, "SELECT * FROM runs ORDER BY policy, budget DESC")
        if r["run_id"] in wanted
    ]


def check_policies(cfg: KvbenchConfig, engine: BenchEngine) -> None:
    offered = engine.policies()
    for label in cfg.grid.policies:
        p = cfg.grid.resolve(label)[0]
        if p not in offered:
            where = f"grid.variants.{label}.policy" if p != label else "grid.policies"
            raise LmlabError(
                f"{where}: {p!r} is not offered by the {engine.kind} engine "
                f"(it offers {', '.join(offered)})"
            )


def run_grid(
    cfg: KvbenchConfig,
    conn: sqlite3.Connection,
    engine: BenchEngine,
    prepare_hash: str,
    echo: Callable[[str], None] = print,
) -> dict:
    check_policies(cfg, engine)
    engine.preflight()  # an unreachable endpoint stops here, before any row is written
    ds = db.rows(conn, "SELECT * FROM datasets")[0]
    examples = db.rows(
        conn,
        "SELECT e.example_id, e.prompt, e.prompt_tokens, e.suffix, e.suffix_tokens "
        "FROM manifest_entries m "
        "JOIN examples e USING (dataset_id, example_id) ORDER BY e.prompt_tokens, e.example_id",
    )
    ghash = grid_hash(cfg, engine, prepare_hash)
    sent = 0
    for policy, budget in grid_cells(cfg):
        rid = run_id(policy, budget, ghash)
        with db.Tx(conn):
            conn.execute(
                "INSERT OR IGNORE INTO runs (run_id, grid_hash, engine, model, policy, budget, "
                "config, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rid,
                    ghash,
                    engine.kind,
                    engine.model_id(),
                    policy,
                    budget,
                    json.dumps(cfg.model_dump(mode="json")),
                    time.time(),
                ),
            )
        done = {
            r[0]
            for r in conn.execute(
                "SELECT q.example_id FROM requests q JOIN responses USING (request_id) "
                "WHERE q.run_id=?",
                (rid,),
            )
        }
        todo = [
            Item(
                f"{rid}/{e['example_id']}",
                e["example_id"],
                e["prompt"],
                ds["max_new_tokens"],
                kv_suffix=e["suffix_tokens"] or 0,
                suffix=e["suffix"],
            )
            for e in examples
            if e["example_id"] not in done
        ]
        if not todo:
            continue
        t0 = time.time()
        base, options = cfg.grid.resolve(policy)  # a variant's label -> its policy and options
        for item, reply in engine.run_cell(todo, base, budget, options, cfg.generation):
            store(conn, rid, item, reply)
            sent += 1
        echo(f"run {policy} @ {budget:g}: {len(todo)} request(s) in {time.time() - t0:.1f}s")
    return verify(conn, cfg, ghash) | {"sent": sent, "grid_hash": ghash}


def store(conn: sqlite3.Connection, rid: str, item: Item, reply) -> None:
    now = time.time()
    with db.Tx(conn):
        db.insert(
            conn,
            "requests",
            {
                "request_id": item.request_id,
                "run_id": rid,
                "example_id": item.example_id,
                "prompt_tokens": reply.prompt_tokens,
                "max_new_tokens": item.max_new_tokens,
                "kv_suffix": item.kv_suffix,
                "created_at": now,
            },
        )
        db.insert(
            conn,
            "responses",
            {
                "request_id": item.request_id,
                "text": reply.text,
                "finish_reason": reply.finish_reason,
                "error_type": reply.error_type,
                "error": reply.error,
                "attempts": reply.attempts,
                "created_at": now,
            },
        )
        db.insert(
            conn,
            "telemetry",
            {
                "request_id": item.request_id,
                "latency_s": reply.latency_s,
                "ttft_s": reply.ttft_s,
                "prefill_s": reply.prefill_s,
                "decode_s": reply.decode_s,
                "decode_tokens_per_s": reply.decode_tokens_per_s,
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "kv_retained": reply.kv_retained,
                "kv_bytes_kept": reply.kv_bytes_kept,
                "kv_bytes_full": reply.kv_bytes_full,
                "peak_mem_bytes": reply.peak_mem_bytes,
            },
        )


def _responses(conn: sqlite3.Connection, rid: str) -> list[dict]:
    return db.rows(
        conn,
        "SELECT q.example_id, q.kv_suffix, r.text, r.error_type, t.prompt_tokens, t.kv_retained "
        "FROM requests q JOIN responses r USING (request_id) "
        "LEFT JOIN telemetry t USING (request_id) WHERE q.run_id=?",
        (rid,),
    )


def expected_retained(budget: float, prompt: int, suffix: int = 0) -> int:
    """KV positions per layer a policy keeps: the budget applies to the prompt before the suffix,
    which is prefilled after compression and kept whole."""
    return kept_length(budget, prompt - suffix) + suffix


def budget_status(policy: str, budget: float, rows: list[dict]) -> str:
    if policy == "full" or budget >= 1.0:
        return "reference (nothing to compress)"
    answered = [r for r in rows if not r["error_type"]]
    reported = [r for r in answered if r["kv_retained"] and json.loads(r["kv_retained"])]
    if not reported:
        return "budget unverified (the engine reported no retained KV)"
    exact = applied = 0
    suffixed = any(r["kv_suffix"] for r in reported)
    for r in reported:
        kept, n, s = json.loads(r["kv_retained"]), r["prompt_tokens"] or 0, r["kv_suffix"] or 0
        exact += all(k == expected_retained(budget, n, s) for k in kept)
        applied += all(k < n for k in kept)
    if exact == len(reported):
        rule = "ceil(budget x (prompt - suffix)) + suffix" if suffixed else "ceil(budget x prompt)"
        return f"verified: retained KV = {rule} on {exact}/{len(answered)} requests"
    if applied == len(reported):
        return f"applied: fewer KV positions than the prompt kept on {applied}/{len(answered)}"
    return f"NOT applied: the full prompt was kept on {len(reported) - applied}/{len(reported)}"


def verify(conn: sqlite3.Connection, cfg: KvbenchConfig, ghash: str) -> dict:
    runs = current_runs(conn, cfg, ghash)
    texts: dict[tuple[str, float], dict[str, str]] = {}
    with db.Tx(conn):
        for r in runs:
            rows = _responses(conn, r["run_id"])
            texts[(r["policy"], r["budget"])] = {
                x["example_id"]: x["text"] for x in rows if not x["error_type"]
            }
            conn.execute(
                "UPDATE runs SET verified=? WHERE run_id=?",
                (budget_status(r["policy"], r["budget"], rows), r["run_id"]),
            )
    compared = changed = 0
    for (policy, budget), outs in texts.items():
        if policy == "full" or budget >= 1.0:
            continue
        ref = texts.get((policy, 1.0)) or texts.get(REFERENCE) or {}
        for ex, text in outs.items():
            if ex in ref:
                compared += 1
                changed += text != ref[ex]
    if compared and not changed:
        with db.Tx(conn):
            conn.execute(
                "UPDATE runs SET verified='FAILED: budgets had no effect' WHERE grid_hash=? "
                "AND budget < 1 AND policy != 'full'",
                (ghash,),
            )
        raise LmlabError(
            f"the budgets had no effect: outputs at every budget < 1.0 equal those at 1.0 on "
            f"all {compared} compared requests (the engine or server ignores kv_budget / "
            "kv_policy)"
        )
    return {"compared": compared, "changed": changed}
