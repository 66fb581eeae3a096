"""The stages end to end on the sanity data: artifacts, skipping, --force, a killed run resuming."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import SANITY, db_counts

from lmlab.errors import LmlabError
from lmlab.studies.kvbench.pipeline import STAGES, Bench, load_config

TABLES = (
    "datasets",
    "examples",
    "bins",
    "manifest_entries",
    "runs",
    "requests",
    "responses",
    "telemetry",
    "scores",
    "bin_stats",
    "paired_diffs",
    "transition_summary",
)


def test_sanity_all_offline_writes_every_artifact_and_a_rerun_does_nothing(tmp_path, lmlab_cli):
    out = tmp_path / "sanity"
    args = ("kvbench", "all", "-c", SANITY, "--set", f"output.dir={out}")
    t0 = time.time()
    first = lmlab_cli(*args, check=0)
    assert time.time() - t0 < 120, "sanity should take seconds"
    assert "report:" in first.stdout
    for rel in (
        "kvbench.sqlite",
        "report.md",
        "config.yaml",
        "data/processed/sanity__where_lives/manifest.json",
        *(f"plots/{p}" for p in ("acc_by_bin.png", "fail_by_bin.png", "latency_p50_by_bin.png")),
        "plots/acc_heatmap.png",
    ):
        assert (out / rel).is_file(), rel
    counts = db_counts(out / "kvbench.sqlite")
    for t in TABLES:
        assert counts[t] > 0, t
    # 6 sampled examples x (full, snapkv, streamingllm at 1.0 and 0.2 = 5 cells)
    assert counts["requests"] == counts["responses"] == counts["telemetry"] == 30
    report = (out / "report.md").read_text()
    assert "verified: retained KV = ceil(budget x prompt)" in report
    manifest = json.loads((out / "data/processed/sanity__where_lives/manifest.json").read_text())
    assert len(manifest["entries"]) == 6 and len(manifest["bin_edges"]) == 3

    mtime = (out / "report.md").stat().st_mtime_ns
    again = lmlab_cli(*args, check=0)
    assert again.stdout.count("up to date (skipped") == len(STAGES)
    assert db_counts(out / "kvbench.sqlite") == counts
    assert (out / "report.md").stat().st_mtime_ns == mtime


def test_force_redoes_a_stage_and_changed_config_redoes_downstream(tiny):
    path = tiny()
    bench = Bench(load_config(path, None), source=str(path), echo=lambda s: None)
    assert bench.all() == ["done"] * 5
    assert bench.all() == ["skipped"] * 5
    assert bench.stage("score", force=True) == "done"
    # score was redone, so its downstream stages no longer count as done
    assert [bench.stage(s) for s in ("analyze", "report")] == ["done", "done"]
    n_requests = db_counts(bench.out / "kvbench.sqlite")["requests"]
    # a new analysis threshold redoes analyze and report only
    changed = Bench(
        load_config(path, ["analysis.threshold=0.2"]), source=str(path), echo=lambda s: None
    )
    assert changed.all() == ["skipped", "skipped", "skipped", "done", "done"]
    assert db_counts(bench.out / "kvbench.sqlite")["requests"] == n_requests


def test_a_later_stage_without_its_upstream_names_config_and_stage(tiny):
    path = tiny()
    bench = Bench(load_config(path, None), source=str(path), echo=lambda s: None)
    with pytest.raises(LmlabError, match=rf"{path}: stage score: run `run` first"):
        bench.stage("score")


def test_a_killed_run_resumes_without_duplicate_or_lost_rows(tiny, tmp_path):
    # one request per engine call, so the kill lands between committed requests; requests long
    # enough (a wider model, 48 new tokens) that the run cannot finish between two polls
    path = tiny(
        **{
            "engine.batch_size": 1,
            "sampling.n_per_bin": 4,
            "dataset.max_new_tokens": 48,
            "engine.random_init.n_embd": 128,
            "engine.random_init.depth": 4,
        }
    )
    db = tmp_path / "bench" / "kvbench.sqlite"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "lmlab", "kvbench"]
    subprocess.run([*base, "prepare", "-c", str(path)], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(
        [*base, "run", "-c", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if db.exists() and db_counts(db).get("responses", 0) >= 3:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    partial = db_counts(db)
    total = 8 * 3  # 8 examples x (full@1, snapkv@1, snapkv@0.2)
    assert 3 <= partial["responses"] < total, "the kill should land mid-run"
    assert partial["requests"] == partial["responses"] == partial["telemetry"]
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT stage FROM stages WHERE stage='run'").fetchone() is None
    conn.close()

    subprocess.run([*base, "run", "-c", str(path)], check=True, env=env, capture_output=True)
    done = db_counts(db)
    assert done["requests"] == done["responses"] == done["telemetry"] == total
    conn = sqlite3.connect(db)
    pairs = conn.execute("SELECT run_id, example_id FROM requests").fetchall()
    assert len(set(pairs)) == total
    # the requests answered before the kill were kept, not redone
    assert conn.execute("SELECT COUNT(DISTINCT run_id) FROM requests").fetchone()[0] == 3
    conn.close()
