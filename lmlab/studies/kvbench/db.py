"""The bench's SQLite database: the source of truth for every stage.

WAL mode, one transaction per request (its request, response and telemetry rows land together or
not at all), so a killed `run` resumes from the requests that have a response, with no duplicate
and no lost row. A stage's `stages` row (its input hash) is written in the same transaction as its
last rows: a stage is either recorded done with everything it wrote, or not done.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

DB_NAME = "kvbench.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS stages (
  stage TEXT PRIMARY KEY, input_hash TEXT NOT NULL, done_at REAL NOT NULL, note TEXT);
CREATE TABLE IF NOT EXISTS datasets (
  dataset_id TEXT PRIMARY KEY, kind TEXT, source TEXT, task TEXT, metric TEXT,
  template TEXT, max_new_tokens INTEGER, length_unit TEXT, n_rows INTEGER, created_at REAL);
CREATE TABLE IF NOT EXISTS examples (
  dataset_id TEXT, example_id TEXT, prompt TEXT, answers TEXT, all_classes TEXT,
  dataset_length INTEGER, prompt_tokens INTEGER, prompt_tokens_full INTEGER, truncated INTEGER,
  suffix TEXT, suffix_tokens INTEGER, PRIMARY KEY (dataset_id, example_id));
CREATE TABLE IF NOT EXISTS bins (
  dataset_id TEXT, bin_id INTEGER, lo INTEGER, hi INTEGER, n_available INTEGER,
  n_sampled INTEGER, PRIMARY KEY (dataset_id, bin_id));
CREATE TABLE IF NOT EXISTS manifest_entries (
  dataset_id TEXT, example_id TEXT, bin_id INTEGER, position INTEGER,
  PRIMARY KEY (dataset_id, example_id));
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, grid_hash TEXT, engine TEXT, model TEXT, policy TEXT, budget REAL,
  config TEXT, verified TEXT, note TEXT, created_at REAL);
CREATE TABLE IF NOT EXISTS requests (
  request_id TEXT PRIMARY KEY, run_id TEXT, example_id TEXT, prompt_tokens INTEGER,
  max_new_tokens INTEGER, kv_suffix INTEGER, created_at REAL);
CREATE TABLE IF NOT EXISTS responses (
  request_id TEXT PRIMARY KEY, text TEXT, finish_reason TEXT, error_type TEXT, error TEXT,
  attempts INTEGER, created_at REAL);
CREATE TABLE IF NOT EXISTS telemetry (
  request_id TEXT PRIMARY KEY, latency_s REAL, ttft_s REAL, prefill_s REAL, decode_s REAL,
  decode_tokens_per_s REAL, prompt_tokens INTEGER, completion_tokens INTEGER,
  kv_retained TEXT, kv_bytes_kept INTEGER, kv_bytes_full INTEGER, peak_mem_bytes INTEGER);
CREATE TABLE IF NOT EXISTS scores (
  request_id TEXT PRIMARY KEY, metric TEXT, score REAL, answered INTEGER);
CREATE TABLE IF NOT EXISTS failures (
  request_id TEXT PRIMARY KEY, error_type TEXT, detail TEXT);
CREATE TABLE IF NOT EXISTS bin_stats (
  policy TEXT, budget REAL, bin_id INTEGER, n INTEGER, mean REAL, ci_lo REAL, ci_hi REAL,
  n_answered INTEGER, mean_answered REAL, fail_rate REAL, latency_p50 REAL, latency_p95 REAL,
  kv_bytes_kept REAL, kv_fraction REAL, PRIMARY KEY (policy, budget, bin_id));
CREATE TABLE IF NOT EXISTS paired_diffs (
  policy TEXT, bin_id INTEGER, budget REAL, reference TEXT, ref_budget REAL, n INTEGER,
  diff REAL, ci_lo REAL, ci_hi REAL, PRIMARY KEY (policy, bin_id, budget, reference));
CREATE TABLE IF NOT EXISTS transition_summary (
  policy TEXT, bin_id INTEGER, rule TEXT, transition_budget REAL, drop_mean REAL,
  ci_lo REAL, ci_hi REAL, PRIMARY KEY (policy, bin_id, rule));
"""

# columns added since the first schema: an older database gains them (empty) when opened
ADDED_COLUMNS = (
    ("examples", "suffix", "TEXT"),
    ("examples", "suffix_tokens", "INTEGER"),
    ("requests", "kv_suffix", "INTEGER"),
)

# the rows each stage owns: redoing a stage clears them first (in the same transaction)
STAGE_TABLES = {
    "prepare": ("datasets", "examples", "bins", "manifest_entries"),
    "score": ("scores", "failures"),
    "analyze": ("bin_stats", "paired_diffs", "transition_summary"),
}


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)  # explicit transactions
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    for table, col, kind in ADDED_COLUMNS:
        if col not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {col} {kind}")
    return conn


class Tx:
    """`with Tx(conn):` one BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def stage_hash(conn: sqlite3.Connection, stage: str) -> str | None:
    row = conn.execute("SELECT input_hash FROM stages WHERE stage=?", (stage,)).fetchone()
    return row[0] if row else None


def mark_done(conn: sqlite3.Connection, stage: str, input_hash: str, note: str = "") -> None:
    """Inside the caller's transaction."""
    conn.execute(
        "INSERT OR REPLACE INTO stages VALUES (?, ?, ?, ?)", (stage, input_hash, time.time(), note)
    )


def forget_stage(conn: sqlite3.Connection, stage: str) -> None:
    conn.execute("DELETE FROM stages WHERE stage=?", (stage,))


def clear(conn: sqlite3.Connection, stage: str) -> None:
    """Inside the caller's transaction: drop the rows a stage owns."""
    for table in STAGE_TABLES.get(stage, ()):
        conn.execute(f"DELETE FROM {table}")  # noqa: S608 (fixed table names)


def insert(conn: sqlite3.Connection, table: str, row: dict) -> None:
    cols = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    values = [json.dumps(v) if isinstance(v, list | dict) else v for v in row.values()]
    conn.execute(f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({marks})", values)


def rows(conn: sqlite3.Connection, sql: str, args: tuple = ()) -> list[dict]:
    return [dict(r) for r in conn.execute(sql, args).fetchall()]


def count(conn: sqlite3.Connection, table: str) -> int:
    return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608
