"""Runs that never lose or mix work: kill a real training process, rerun, check the record."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lmlab.runs.rundir import read_jsonl, read_status
from lmlab.train.config import TrainConfig
from lmlab.train.run import _identity
from tests.train.conftest import tiny_sets


def start(run_dir, sets):
    argv = [sys.executable, "-m", "lmlab", "train", "--run-dir", str(run_dir)]
    for s in sets:
        argv += ["--set", s]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def kill_after(proc, metrics, step, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.exists():
            rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.endswith("}")]
            if rows and rows[-1].get("step", 0) >= step:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return rows[-1]["step"]
        if proc.poll() is not None:
            pytest.fail(f"training ended before the kill:\n{proc.stdout.read()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("training never reached the step")


def test_killed_between_evaluations_resumes_from_ckpt_every(toy_data, tmp_path):
    pre, _, tok = toy_data
    sets = tiny_sets(pre, tok, steps=400, eval_every=0, ckpt_every=10, log_every=1)
    run = tmp_path / "r"
    killed_at = kill_after(start(run, sets), run / "metrics.jsonl", 25)
    # a step is logged before its checkpoint is saved: a kill right after step 30's log finds
    # the checkpoint of step 20 (the last one written, atomically, is what resume must use)
    saved = json.loads((run / "checkpoints" / "latest" / "meta.json").read_text())["step"]
    assert saved in (10 * (killed_at // 10), 10 * (killed_at // 10) - 10) and saved >= 20
    rerun = start(run, sets)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    assert f"at step {saved} of 400" in out
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl")]
    assert steps == list(range(1, 401))  # one trajectory: no duplicate, no gap
    again = start(run, sets)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and "already done" in out and "val_loss" in out
    assert read_status(run)["state"] == "done"


def test_a_restart_from_scratch_sets_the_abandoned_log_aside(toy_data, tmp_path):
    pre, _, tok = toy_data
    sets = tiny_sets(pre, tok, steps=400, eval_every=0, ckpt_every=0)
    run = tmp_path / "r"
    killed_at = kill_after(start(run, sets), run / "metrics.jsonl", 5)
    short = [s for s in sets if not s.startswith("steps=")] + ["steps=12"]
    rerun = start(run, short)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    assert "no checkpoint to resume from" in out
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, 13))
    aside = read_jsonl(run / "metrics.abandoned-1.jsonl")
    assert len(aside) >= killed_at


def test_world_size_is_part_of_the_run_id_only_when_it_sets_the_batch():
    free = TrainConfig()
    fixed = TrainConfig(total_batch_tokens=8 * 256 * 2)
    assert _identity(free, 2) != _identity(free, 1) == free.model_dump(mode="json")
    assert _identity(fixed, 2) == _identity(fixed, 1)


def test_a_changed_batch_cannot_resume_and_says_which_flag(toy_data, tmp_path, lmlab_cli):
    pre, _, tok = toy_data
    run = tmp_path / "r"
    sets = tiny_sets(pre, tok, steps=4, eval_every=2)
    args = ["train", "--run-dir", run] + [a for s in sets for a in ("--set", s)]
    lmlab_cli(*args, check=0)
    more = ["train", "--run-dir", run, "--set", "steps=6", "--set", "micro_batch=8"]
    more += [a for s in sets if not s.startswith(("steps=", "micro_batch=")) for a in ("--set", s)]
    proc = lmlab_cli(*more)
    assert proc.returncode == 1 and "--no-resume" in proc.stderr and "--run-dir" in proc.stderr
    assert read_status(run)["state"] == "done"  # the finished run's record is untouched
