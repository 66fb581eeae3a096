"""The seed's Track-B matrix on `lmlab sweep run`: plan, summary columns, skip and resume."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import yaml

from lmlab.runs.sweep import load_sweep, plan
from tests.conftest import ROOT

TRACK_B = ROOT / "configs" / "sweeps" / "track_b.yaml"
SEED_COLUMNS = [
    "run_id", "experiment", "steps", "seeds", "lr", "warmup", "tau", "k", "neg_m",
    "queue_size", "false_neg_mode", "threshold", "status",
    "vs_teacher_recall10_best", "vs_teacher_ndcg10_final",
]  # fmt: skip


def test_track_b_plans_the_seeds_matrix(tmp_path):
    spec, root = load_sweep(TRACK_B)
    runs = plan(spec, root, tmp_path)
    per_exp = {}
    for r in runs:
        per_exp.setdefault(r.experiment, []).append(r.seed)
    assert per_exp == {
        "sanity": [0],
        "core_20k_seed0": [0],
        "core_20k_seeds012": [0, 1, 2],
        "core_50k_seeds012": [0, 1, 2],
        "tune_tau005": [0],
        "tune_tau010": [0],
    }
    tau = {r.experiment: r.overrides.get("recipe_args.tau") for r in runs}
    assert tau["tune_tau005"] == 0.05 and tau["tune_tau010"] == 0.10
    assert {r.overrides["steps"] for r in plan(spec, root, tmp_path, quick=True)} == {10}


def tiny_sweep(tmp_path):
    """track_b.yaml with its base config swapped for a tiny .npy teacher (seconds per run)."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((6, 12))[rng.integers(0, 6, 120)] + 0.5 * rng.standard_normal(
        (120, 12)
    )
    np.save(tmp_path / "t.npy", emb.astype(np.float32))
    base = yaml.safe_load((ROOT / "configs" / "distill" / "track_b.yaml").read_text())
    base["micro_batch"] = 16
    base["recipe_args"].update(
        builtin=None,
        teacher_npy=str(tmp_path / "t.npy"),
        k=6,
        neg_m=16,
        queue_size=64,
        dim=4,
        hidden=16,
    )
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = yaml.safe_load(TRACK_B.read_text())
    spec.update(base_config=str(tmp_path / "base.yaml"), out=str(tmp_path / "sweep"), retries=0)
    spec["quick"]["steps"] = 4
    spec["quick"]["eval_every"] = 2
    spec["quick"]["ckpt_every"] = 2
    path = tmp_path / "track_b.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep(path, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "lmlab",
        "sweep",
        "run",
        str(path),
        "--quick",
        "--only",
        "core_20k_seeds012",
        *extra,
    ]
    return cmd, env


def test_quick_sweep_twice_second_does_nothing_and_summary_has_seed_columns(tmp_path):
    path = tiny_sweep(tmp_path)
    cmd, env = sweep(path)
    first = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "3 runs, 0 already done, 3 to run" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert second.returncode == 0 and "3 already done, 0 to run" in second.stdout
    assert (
        sum(p.read_text().count("# attempt") for p in (tmp_path / "sweep").glob("*/sweep.log")) == 3
    )
    with open(tmp_path / "sweep" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(SEED_COLUMNS) <= set(rows[0])
    runs = [r for r in rows if r["row"] == "run"]
    assert [r["seeds"] for r in runs] == ["0", "1", "2"]
    assert {(r["tau"], r["k"], r["neg_m"], r["false_neg_mode"], r["threshold"]) for r in runs} == {
        ("0.07", "6", "16", "threshold", "0.8")
    }
    (agg,) = [r for r in rows if r["row"] == "aggregate"]
    values = [float(r["vs_teacher_recall10_best"]) for r in runs]
    assert float(agg["vs_teacher_recall10_best"]) == np.mean(values).item()
    assert float(agg["vs_teacher_recall10_best_std"]) > 0  # seeds differ
    for r in runs:  # each run also left the seed's files
        logs = tmp_path / "sweep" / r["run_id"] / "logs"
        assert (logs / "train_logs.parquet").exists() and (logs / "train_summary.json").exists()


def test_killed_sweep_reruns_only_the_missing_runs(tmp_path):
    path = tiny_sweep(tmp_path)
    cmd, env = sweep(path)
    proc = subprocess.Popen(
        cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list((tmp_path / "sweep").glob("*/status.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "sweep").glob("*/status.json")}
    assert 1 <= len(done) < 3
    again = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{len(done)} already done, {3 - len(done)} to run" in again.stdout
    after = {
        p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "sweep").glob("*/status.json")
    }
    assert len(after) == 3 and all(
        after[k] == v for k, v in done.items()
    )  # finished ones untouched


def test_run_track_b_wrapper_options(tmp_path):
    script = ROOT / "scripts" / "run_track_b.sh"
    env = {**os.environ, "LMLAB": f"{sys.executable} -m lmlab"}
    helped = subprocess.run(["bash", str(script), "-h"], capture_output=True, text=True, env=env)
    assert helped.returncode == 0 and "--dry-run|-d" in helped.stdout
    bad = subprocess.run(["bash", str(script), "--fast"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "unknown option '--fast'" in bad.stderr
    dry = subprocess.run(["bash", str(script), "-d", "-q"], capture_output=True, text=True, env=env)
    assert dry.returncode == 0, dry.stderr
    assert "10 run(s); dry run: nothing was run" in dry.stdout and "--set steps=10" in dry.stdout
