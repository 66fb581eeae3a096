"""One writer per run directory: an OS lock that a second process hits and a kill releases."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lmlab.errors import LmlabError
from lmlab.runs.lock import LOCK_FILE, holder_pid
from lmlab.runs.rundir import RunDir
from tests.conftest import run_lmlab


def wait_for(cond, timeout=120.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def metric_rows(run_dir):
    path = run_dir / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def test_lock_names_the_holder_and_dies_with_it(tmp_path):
    run_dir = tmp_path / "r"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from lmlab.runs.rundir import RunDir\n"
            f"run = RunDir.create({{'x': 1}}, name='r', run_dir={str(run_dir)!r})\n"
            "print('locked', flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LmlabError, match=rf"in use by pid {holder.pid}\b") as err:
            RunDir.create({"x": 1}, name="r", run_dir=run_dir)
        assert "\n" not in str(err.value)
        assert not (run_dir / "status.json").exists()  # the loser wrote nothing
    finally:
        holder.kill()
        holder.wait()
    run = RunDir.create({"x": 1}, name="r", run_dir=run_dir)  # SIGKILL left no stale lock
    assert holder_pid(run_dir) == os.getpid()
    run.finish("done")
    # finish released it: another process can take it now
    code = (
        "from lmlab.runs.rundir import RunDir\n"
        f"RunDir.create({{'x': 1}}, name='r', run_dir={str(run_dir)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_process_may_open_its_run_dir_twice(tmp_path):
    a = RunDir.create({"x": 1}, name="e", root=tmp_path)
    b = RunDir.create({"x": 1}, name="e", root=tmp_path)
    a.finish("done")
    assert (b.path / LOCK_FILE).exists()  # still held for b: the lock is counted per process
    code = (
        "from lmlab.runs.rundir import RunDir\n"
        f"RunDir.create({{'x': 1}}, name='e', root={str(tmp_path)!r})\n"
    )
    blocked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert blocked.returncode != 0 and f"pid {os.getpid()}" in blocked.stderr
    b.finish("done")


def test_two_trainings_in_one_run_dir(tmp_path):
    """The issue's reproduction: `lmlab train --profile smoke` twice in one run directory."""
    run_dir = tmp_path / "run"
    args = [
        "train",
        "--profile",
        "smoke",
        "--set",
        "steps=100000",
        "--set",
        "eval_every=0",
        "--set",
        "progress=false",
        "--run-dir",
        run_dir,
    ]
    cmd = [sys.executable, "-m", "lmlab", *map(str, args)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LMLAB_DEBUG", None)
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: metric_rows(run_dir) > 0, what="the first training to log")
        assert holder_pid(run_dir) == first.pid
        t0 = time.time()
        second = run_lmlab(*args)
        assert second.returncode == 1
        assert f"in use by pid {first.pid}" in second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        assert time.time() - t0 < 60  # it stops at the lock, it does not train
        assert first.poll() is None  # the first one goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the kernel dropped the dead holder's lock: a third training starts without help
    logged = metric_rows(run_dir)
    third = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: holder_pid(run_dir) == third.pid, what="the third training's lock")
        wait_for(lambda: metric_rows(run_dir) > logged, what="the third training to log")
        third.send_signal(signal.SIGINT)  # Ctrl-C: recorded as interrupted, not failed
        assert third.wait(timeout=120) == 130
    finally:
        if third.poll() is None:
            third.kill()
            third.wait()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "interrupted", status
