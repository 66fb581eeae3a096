import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lmlab.runs.rundir import read_status
from lmlab.runs.sweep import load_sweep, plan
from tests.conftest import ROOT

TOY = ROOT / "tests" / "fixtures" / "toy_command.py"


def write_sweep(tmp_path, **over):
    spec = {
        "name": "toy",
        "command": f"{sys.executable} {TOY}",
        "seeds": [0, 1],
        "experiments": [
            {"name": "slow", "set": {"lr": 0.02}},
            {"name": "fast", "set": {"lr": 0.2}},
        ],
        "metrics": ["val_loss", "loss"],
        "quick": {"steps": 3},
        "out": str(tmp_path / "sweep"),
        "retries": 0,
    }
    spec.update(over)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def read_summary(tmp_path):
    with open(tmp_path / "sweep" / "summary.csv") as f:
        return list(csv.DictReader(f))


def logged_runs(tmp_path):
    """Count command executions by the attempt lines each run's sweep.log records."""
    logs = list((tmp_path / "sweep").glob("*/sweep.log"))
    return sum(p.read_text().count("# attempt") for p in logs)


def test_sweep_runs_once_then_skips(tmp_path, lmlab_cli):
    f = write_sweep(tmp_path)
    first = lmlab_cli("sweep", "run", f, check=0)
    assert "4 to run" in first.stdout
    assert logged_runs(tmp_path) == 4
    second = lmlab_cli("sweep", "run", f, check=0)
    assert "4 already done, 0 to run" in second.stdout
    assert logged_runs(tmp_path) == 4  # nothing ran again
    rows = read_summary(tmp_path)
    runs = [r for r in rows if r["row"] == "run"]
    aggs = [r for r in rows if r["row"] == "aggregate"]
    assert len(runs) == 4 and len(aggs) == 2
    # the swept values are those the run's own config.yaml recorded
    assert {(r["experiment"], r["lr"], r["seed"]) for r in runs} == {
        ("slow", "0.02", "0"),
        ("slow", "0.02", "1"),
        ("fast", "0.2", "0"),
        ("fast", "0.2", "1"),
    }
    fast = [float(r["val_loss_best"]) for r in runs if r["experiment"] == "fast"]
    agg = next(r for r in aggs if r["experiment"] == "fast")
    assert float(agg["val_loss_best"]) == pytest.approx(sum(fast) / 2)
    assert float(agg["val_loss_best_std"]) > 0
    txt = (tmp_path / "sweep" / "summary.txt").read_text()
    assert "top 3 by val_loss" in txt and "failed or incomplete runs: 0" in txt


def test_seed_reaches_the_run(tmp_path, lmlab_cli):
    f = write_sweep(tmp_path, seeds=[0, 1], experiments=[{"name": "e", "set": {}}])
    lmlab_cli("sweep", "run", f, check=0)
    runs = {r["seed"]: r["val_loss_final"] for r in read_summary(tmp_path) if r["row"] == "run"}
    assert runs["0"] != runs["1"]  # different seed -> different result


def test_repeated_cells_are_refused(tmp_path, lmlab_cli):
    f = write_sweep(tmp_path, seeds=[0, 0], experiments=[{"name": "e", "set": {}}])
    proc = lmlab_cli("sweep", "run", f, "--workers", "2")
    assert proc.returncode == 1 and "seeds repeat: [0, 0]" in proc.stderr and str(f) in proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "sweep").exists()
    f = write_sweep(tmp_path, seeds=[0], grid={"lr": [0.1, 0.1]}, experiments=[])
    proc = lmlab_cli("sweep", "run", f)
    assert proc.returncode == 1 and "lr=0.1 seed=0 is the same run as lr=0.1 seed=0" in proc.stderr


def test_summary_csv_columns_are_unique_and_typed(tmp_path, lmlab_cli):
    import polars as pl

    f = write_sweep(tmp_path)
    lmlab_cli("sweep", "run", f, check=0)
    header = (tmp_path / "sweep" / "summary.csv").read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header)) and header.count("seed") == 1
    df = pl.read_csv(tmp_path / "sweep" / "summary.csv")
    assert df.schema["seed"].is_integer() and df.schema["n"].is_integer()
    assert df.filter(pl.col("row") == "aggregate")["n"].to_list() == [2, 2]
    assert "(n=2)" in (tmp_path / "sweep" / "summary.txt").read_text()


def test_dry_run_runs_nothing(tmp_path, lmlab_cli):
    f = write_sweep(tmp_path)
    out = lmlab_cli("sweep", "run", f, "--dry-run", check=0).stdout
    assert "4 run(s); dry run" in out and "--set lr=0.2" in out and "--run-dir" in out
    assert not (tmp_path / "sweep").exists()


def test_quick_only_max_runs_and_force(tmp_path, lmlab_cli):
    f = write_sweep(tmp_path)
    lmlab_cli("sweep", "run", f, "--quick", "--only", "fast", "--max-runs", "1", check=0)
    assert logged_runs(tmp_path) == 1
    (cfg,) = (tmp_path / "sweep").glob("fast-*/config.yaml")
    assert yaml.safe_load(cfg.read_text())["steps"] == 3
    lmlab_cli("sweep", "run", f, "--quick", "--only", "fast", "--force", "--workers", "2", check=0)
    assert logged_runs(tmp_path) == 3  # 1 + both fast seeds again


def test_failure_continues_and_exits_nonzero(tmp_path, lmlab_cli):
    f = write_sweep(
        tmp_path,
        experiments=[{"name": "bad", "set": {"fail": True}}, {"name": "good", "set": {}}],
        retries=1,
    )
    proc = lmlab_cli("sweep", "run", f)
    assert proc.returncode == 1 and "2 of 4 run(s) failed" in proc.stderr
    runs = {(r["experiment"], r["status"]) for r in read_summary(tmp_path) if r["row"] == "run"}
    assert runs == {("bad", "failed"), ("good", "done")}
    assert logged_runs(tmp_path) == 2 * 2 + 2  # failed runs retried once


def test_run_without_metrics_is_not_a_success(tmp_path, lmlab_cli):
    f = write_sweep(
        tmp_path, seeds=[0], experiments=[{"name": "quiet", "set": {"log_metrics": False}}]
    )
    proc = lmlab_cli("sweep", "run", f)
    assert proc.returncode == 1
    (row,) = [r for r in read_summary(tmp_path) if r["row"] == "run"]
    assert row["status"] == "missing_metrics"


def test_killed_sweep_resumes_only_missing(tmp_path):
    # Seed 0 runs at once; the other seeds wait for a gate file that appears only after the
    # kill, so exactly one run is done when the sweep dies (no race with runs finishing).
    gate = tmp_path / "gate"
    wait = f'case "$*" in *seed=0*) ;; *) until [ -e {gate} ]; do sleep 0.05; done;; esac'
    command = ["sh", "-c", f'{wait}; exec "{sys.executable}" "{TOY}" "$@"', "toy"]
    f = write_sweep(tmp_path, command=command, experiments=[{"name": "e"}], seeds=[0, 1, 2, 3])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmlab", "sweep", "run", str(f)],
        start_new_session=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def done_runs():
        states = [read_status(p.parent) for p in (tmp_path / "sweep").glob("*/status.json")]
        return sum(1 for s in states if s and s.get("state") == "done")

    deadline = time.time() + 300
    while time.time() < deadline and done_runs() < 1:
        time.sleep(0.05)
    time.sleep(0.3)  # seed 1 is now waiting at the gate (or about to)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done_runs() == 1
    gate.touch()
    proc2 = subprocess.run(
        [sys.executable, "-m", "lmlab", "sweep", "run", str(f)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc2.returncode == 0, proc2.stderr
    assert "1 already done, 3 to run" in proc2.stdout
    assert done_runs() == 4 and logged_runs(tmp_path) <= 5  # the killed attempt at most


def test_grid_expands_every_point_for_every_experiment_and_seed(tmp_path):
    f = write_sweep(
        tmp_path,
        grid={"optim.lr": [0.1, 0.2], "depth": [1, 2, 3]},
        experiments=[{"name": "a", "set": {"x": 1}}, {"name": "b"}],
        seeds=[0, 1],
    )
    spec, root = load_sweep(f)
    runs = plan(spec, root, tmp_path / "out")
    assert len(runs) == 2 * 2 * 3 * 2
    cells = {(r.experiment, r.overrides["optim.lr"], r.overrides["depth"], r.seed) for r in runs}
    assert len(cells) == 24
    first = runs[0]
    # yaml writes the grid keys sorted: depth varies slowest
    assert first.experiment == "a/depth=1,lr=0.1" and first.overrides == {
        "x": 1,
        "optim.lr": 0.1,
        "depth": 1,
        "seed": 0,
    }
    assert {r.experiment for r in runs if r.experiment.startswith("b/")} == {
        f"b/depth={d},lr={lr}" for lr in (0.1, 0.2) for d in (1, 2, 3)
    }
    assert len({r.run_dir for r in runs}) == 24
    only_grid = plan(
        load_sweep(write_sweep(tmp_path, grid={"lr": [1, 2]}, experiments=[]))[0],
        root,
        tmp_path / "out",
    )
    assert [r.experiment for r in only_grid] == ["lr=1", "lr=1", "lr=2", "lr=2"]


def test_run_dir_seed_and_experiment_are_substituted(tmp_path):
    f = write_sweep(
        tmp_path,
        command="lmlab tool --out {run_dir}/x --seed-arg {seed} --name {experiment}",
        experiments=[{"name": "e", "set": {"lr": 0.5}}],
        seeds=[7],
        seed_key="train.seed",
    )
    spec, root = load_sweep(f)
    (run,) = plan(spec, root, tmp_path / "out")
    assert run.argv[:3] == [sys.executable, "-m", "lmlab"]
    assert run.argv[3:] == [
        "tool",
        "--out",
        f"{run.run_dir}/x",
        "--seed-arg",
        "7",
        "--name",
        "e",
        "--set",
        "lr=0.5",
        "--set",
        "train.seed=7",
    ]  # {run_dir} given: no --run-dir appended
    f = write_sweep(tmp_path, command="tool", experiments=[{"name": "e"}], seeds=[3])
    (run,) = plan(*load_sweep(f), tmp_path / "out")
    assert run.argv == ["tool", "--set", "seed=3", "--run-dir", str(run.run_dir)]


def test_a_run_past_timeout_s_is_killed_and_failed(tmp_path, lmlab_cli):
    f = write_sweep(
        tmp_path,
        experiments=[{"name": "sleepy", "set": {"sleep_s": 1.0, "steps": 60}}],
        seeds=[0],
        timeout_s=1,
    )
    started = time.time()
    proc = lmlab_cli("sweep", "run", f)
    assert time.time() - started < 40  # not the 60 s the run would take
    assert proc.returncode == 1 and "timed out after 1.0s" in proc.stdout
    (row,) = [r for r in read_summary(tmp_path) if r["row"] == "run"]
    assert row["status"] == "failed"


@pytest.mark.parametrize(
    "content, expect",
    [
        ({"name": "x", "command": "echo"}, "metrics: Field required"),
        ({"name": "x", "command": "echo", "metrics": ["a"], "sedes": [1]}, "unknown key 'sedes'"),
        ({"name": "x", "command": "echo", "metrics": ["a"], "primary": "b"}, "primary metric 'b'"),
    ],
)
def test_bad_sweep_file_one_line_error(tmp_path, lmlab_cli, content, expect):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(content))
    proc = lmlab_cli("sweep", "run", f)
    assert proc.returncode == 1
    assert expect in proc.stderr and proc.stderr.count("\n") == 1 and str(f) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sweep_paths_relative_to_file(tmp_path, lmlab_cli):
    base = tmp_path / "base.yaml"
    base.write_text("steps: 4\n")
    f = write_sweep(
        tmp_path, base_config="base.yaml", seeds=[0], experiments=[{"name": "b", "set": {}}]
    )
    lmlab_cli("sweep", "run", f, check=0, cwd=Path("/"))
    (cfg,) = (tmp_path / "sweep").glob("b-*/config.yaml")
    assert yaml.safe_load(cfg.read_text())["steps"] == 4
