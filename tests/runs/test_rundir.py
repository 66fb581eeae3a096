import json
import subprocess
import sys

import polars as pl
import pytest

from lmlab.errors import LmlabError
from lmlab.runs.rundir import (
    RunDir,
    find_runs,
    metric_mode,
    read_jsonl,
    read_metrics,
    run_state,
    summarize,
)


def test_layout_and_status_written_last(tmp_path):
    run = RunDir.create({"seed": 1, "lr": 0.1}, name="exp", root=tmp_path)
    assert run.path.parent == tmp_path and run.path.name.startswith("exp-")
    assert len(run.path.name.split("-")[-1]) == 8
    assert run_state(run.path) == "incomplete"
    with run.running():
        run.log(1, loss=2.0, acc=0.1)
        run.log(2, loss=1.0, acc=0.5)
        run.log(3, loss=1.5, acc=0.4)
    status = json.loads((run.path / "status.json").read_text())
    assert status["state"] == "done"
    assert status["final"] == {"loss": 1.5, "acc": 0.4}
    assert status["best"] == {"loss": 1.0, "acc": 0.5}  # min for loss, max for acc
    assert {"started", "finished", "wall_s", "git_commit", "lmlab_version", "host"} <= set(status)
    df = pl.read_parquet(run.path / "metrics.parquet")
    assert df["loss"].to_list() == [2.0, 1.0, 1.5]


@pytest.mark.parametrize(
    "name, mode",
    [
        ("tokens_per_s", "max"),  # a rate, although it ends in _s
        ("decode_tokens_per_s", "max"),
        ("samples_per_sec", "max"),
        ("tok/s", "max"),
        ("wall_s", "min"),
        ("ttft_ms", "min"),
        ("val_loss", "min"),
        ("val_bpb", "min"),
        ("ppl", "min"),
        ("latency", "min"),
        ("rewards/accuracies", "max"),
        ("reward", "max"),
        ("recall@10", "max"),
        ("accuracy", "max"),
    ],
)
def test_metric_direction_rule(name, mode):
    assert metric_mode(name) == mode


def test_best_throughput_is_the_fastest_and_explicit_modes_win():
    rows = [
        {"step": 1, "tokens_per_s": 100.0, "wall_s": 3.0, "val_loss": 2.0, "kl": 0.1},
        {"step": 2, "tokens_per_s": 300.0, "wall_s": 1.0, "val_loss": 1.0, "kl": 0.3},
        {"step": 3, "tokens_per_s": 200.0, "wall_s": 2.0, "val_loss": 1.5, "kl": 0.2},
    ]
    _, best = summarize(rows)
    assert best == {"tokens_per_s": 300.0, "wall_s": 1.0, "val_loss": 1.0, "kl": 0.3}
    _, best = summarize(rows, {"kl": "min", "tokens_per_s": "min"})
    assert best["kl"] == 0.1 and best["tokens_per_s"] == 100.0 and best["val_loss"] == 1.0


def test_same_config_same_dir_different_config_new_dir(tmp_path):
    a = RunDir.create({"seed": 1}, name="e", root=tmp_path)
    b = RunDir.create({"seed": 1}, name="e", root=tmp_path)
    c = RunDir.create({"seed": 2}, name="e", root=tmp_path)
    assert a.path == b.path != c.path


def test_crash_writes_failed_with_error(tmp_path):
    run = RunDir.create({"x": 1}, name="boom", root=tmp_path)
    with pytest.raises(ValueError), run.running():
        run.log(1, loss=1.0)
        raise ValueError("bad thing")
    status = json.loads((run.path / "status.json").read_text())
    assert status["state"] == "failed" and "bad thing" in status["error"]


def test_killed_run_leaves_no_done_marker(tmp_path):
    code = (
        "import os, signal\n"
        "from lmlab.runs.rundir import RunDir\n"
        f"run = RunDir.create({{'x': 1}}, name='k', root={str(tmp_path)!r})\n"
        "with run.running():\n"
        "    run.log(1, loss=1.0)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    (path,) = find_runs(tmp_path)
    assert run_state(path) == "incomplete"
    assert read_metrics(path) == [
        {"step": 1, "loss": 1.0, "time_s": read_metrics(path)[0]["time_s"]}
    ]


def test_rerun_clears_a_failed_status(tmp_path):
    run = RunDir.create({"x": 1}, name="r", root=tmp_path)
    run.finish("failed", error="boom")
    RunDir.create({"x": 1}, name="r", root=tmp_path)
    assert run_state(run.path) == "incomplete"


def test_noop_rerun_keeps_the_finished_record(tmp_path):
    run = RunDir.create({"x": 1}, name="r", root=tmp_path)
    with run.running():
        run.log(1, loss=2.0)
    first = json.loads(run.status_path.read_text())
    again = RunDir.create({"x": 1}, name="r", root=tmp_path)
    assert again.was_done and again.previous_status == first
    assert run_state(again.path) == "done"  # still done while the rerun decides
    with pytest.raises(RuntimeError), again.running():  # even a crash with nothing new logged
        raise RuntimeError("could not resume")
    assert json.loads(run.status_path.read_text()) == first
    with RunDir.create({"x": 1}, name="r", root=tmp_path).running():
        pass
    assert json.loads(run.status_path.read_text()) == first  # started/finished/wall_s/argv kept


def test_rerun_that_logs_reopens_the_run(tmp_path):
    run = RunDir.create({"x": 1}, name="r", root=tmp_path)
    with run.running():
        run.log(1, loss=2.0)
    again = RunDir.create({"x": 1}, name="r", root=tmp_path)
    again.log(2, loss=1.0)
    assert not again.was_done and run_state(again.path) == "incomplete"
    assert not (again.path / "metrics.parquet").exists()
    again.finish("done")
    assert json.loads(again.status_path.read_text())["final"] == {"loss": 1.0}


def test_interrupt_records_interrupted_not_failed(tmp_path):
    run = RunDir.create({"x": 1}, name="i", root=tmp_path)
    with pytest.raises(KeyboardInterrupt), run.running():
        run.log(1, loss=1.0)
        raise KeyboardInterrupt
    status = json.loads(run.status_path.read_text())
    assert status["state"] == "interrupted" and status["error"] == "interrupted"


def test_torn_last_line_tolerated_but_middle_corruption_named(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1}\n{"step": 2, "lo')
    assert read_jsonl(p) == [{"step": 1}]
    p.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(LmlabError, match=r"m.jsonl:2: malformed"):
        read_jsonl(p)


def test_runs_ls_and_show(tmp_path, lmlab_cli):
    run = RunDir.create({"x": 1}, name="shown", root=tmp_path)
    with run.running():
        run.log(1, val_loss=0.25)
    out = lmlab_cli("runs", "ls", tmp_path, check=0).stdout
    assert run.path.name in out and "done" in out and "val_loss=0.25" in out
    out = lmlab_cli("runs", "show", run.path, check=0).stdout
    assert "state: done" in out and "x: 1" in out
    bad = lmlab_cli("runs", "show", tmp_path / "nope")
    assert bad.returncode != 0 and "not a run directory" in bad.stderr


def test_noop_training_rerun_keeps_status_json(tmp_path, lmlab_cli):
    """The issue's reproduction: a finished `lmlab train` run, rerun, keeps its record."""
    run_dir = tmp_path / "run"
    args = ["train", "--profile", "smoke", "--run-dir", run_dir]
    for s in ("steps=4", "schedule.warmup_steps=1", "eval_every=0", "progress=false"):
        args += ["--set", s]
    lmlab_cli(*args, check=0)
    first = (run_dir / "status.json").read_text()
    assert json.loads(first)["state"] == "done"
    lmlab_cli(*args, check=0)
    assert (run_dir / "status.json").read_text() == first  # started/finished/wall_s/argv kept
