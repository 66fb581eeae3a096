"""`score`: each response's metric and failure type (`scores`, `failures`).

A failed request scores 0 and is `answered = 0`; analysis reports accuracy both ways (failures as 0,
and over answered requests only).
"""

from __future__ import annotations

import json
import sqlite3

from lmlab.studies.kvbench import db
from lmlab.studies.kvbench.metrics import classify, score


def run_score(conn: sqlite3.Connection, run_ids: list[str]) -> dict:
    ds = db.rows(conn, "SELECT * FROM datasets")[0]
    metric, task = ds["metric"], ds["task"] if ds["kind"] == "longbench" else ""
    marks = ",".join("?" for _ in run_ids)
    rows = db.rows(
        conn,
        "SELECT q.request_id, r.text, r.finish_reason, r.error_type, r.error, e.answers "
        "FROM requests q JOIN responses r USING (request_id) "
        f"JOIN examples e ON e.example_id = q.example_id WHERE q.run_id IN ({marks})",  # noqa: S608
        tuple(run_ids),
    )
    failed = 0
    with db.Tx(conn):
        db.clear(conn, "score")
        for r in rows:
            failure = classify(r, length_is_failure=metric != "first_word")
            value = (
                0.0 if failure else score(metric, r["text"] or "", json.loads(r["answers"]), task)
            )
            db.insert(
                conn,
                "scores",
                {
                    "request_id": r["request_id"],
                    "metric": metric,
                    "score": value,
                    "answered": int(failure is None),
                },
            )
            if failure:
                failed += 1
                detail = r["error"] or (r["text"] or "")[:200]
                db.insert(
                    conn,
                    "failures",
                    {"request_id": r["request_id"], "error_type": failure, "detail": detail},
                )
    return {"scored": len(rows), "failed": failed, "metric": metric}
