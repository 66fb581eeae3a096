"""Stopping a sweep: signals reach its children, it summarises what finished, nothing survives it.

Every test here starts a real sweep of real child processes and signals or kills it.
"""

import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from lmlab.runs.lock import holder_pid
from tests.runs.test_run_lock import wait_for
from tests.runs.test_sweep import write_sweep

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie left for an init that does not reap counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def started_children(tmp_path, n):
    """Wait until `n` children hold their run-directory locks and have logged; their pids."""
    sweep = tmp_path / "sweep"

    def logging():
        return [d for d in sweep.glob("*-s*") if (d / "metrics.jsonl").exists()]

    wait_for(lambda: len(logging()) >= n, what=f"{n} children logging")
    return {d: holder_pid(d) for d in logging()}


def slow_sweep(tmp_path, seeds=(0, 1, 2, 3)):
    # each run logs for ~15 s: long enough to be stopped mid-run; retries would show up
    return write_sweep(
        tmp_path,
        seeds=list(seeds),
        experiments=[{"name": "e", "set": {"sleep_s": 0.5}}],
        retries=1,
    )


def start_sweep(f, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "lmlab", "sweep", "run", str(f), *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("sig, rc", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_children_and_writes_the_summary(tmp_path, sig, rc):
    f = slow_sweep(tmp_path)
    sweep = start_sweep(f, "--workers", "2")
    children = started_children(tmp_path, 2)
    sweep.send_signal(sig)  # to the sweep alone, as `kill` would; it forwards to its children
    out, err = sweep.communicate(timeout=60)
    assert sweep.returncode == rc, err
    assert f"sweep stopped by {signal.Signals(sig).name}" in err
    for run_dir, pid in children.items():
        assert not alive(pid)
        status = json.loads((run_dir / "status.json").read_text())
        assert status["state"] == "interrupted"  # the child recorded it, not failed
        assert (run_dir / "sweep.log").read_text().count("# attempt") == 1  # not retried
    with open(tmp_path / "sweep" / "summary.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["row"] == "run"]
    states = sorted(r["status"] for r in rows)
    assert states == ["interrupted", "interrupted", "not_run", "not_run"]
    assert "failed" not in states
    assert "summary.txt" in out or (tmp_path / "sweep" / "summary.txt").exists()
    # a rerun picks up where it stopped: interrupted runs are not done
    dry = subprocess.run(
        [sys.executable, "-m", "lmlab", "sweep", "run", str(f), "--max-runs", "0"],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert "4 runs, 0 already done" in dry.stdout


def test_children_die_with_a_killed_sweep(tmp_path):
    f = slow_sweep(tmp_path, seeds=(0,))
    sweep = start_sweep(f)
    ((run_dir, pid),) = started_children(tmp_path, 1).items()
    sweep.kill()  # SIGKILL: the sweep cannot forward anything; the kernel tells the child
    sweep.wait()
    wait_for(lambda: not alive(pid), timeout=30, what="the orphaned child to stop")
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"


def test_a_closed_stdout_still_gets_a_summary(tmp_path):
    f = write_sweep(tmp_path, seeds=[0], experiments=[{"name": "e", "set": {}}])
    cmd = f"set -o pipefail; {sys.executable} -m lmlab sweep run {f} | head -n 1"
    proc = subprocess.run(["bash", "-c", cmd], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("sweep toy: 1 runs")
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    txt = (tmp_path / "sweep" / "summary.txt").read_text()
    assert "failed or incomplete runs: 0" in txt
