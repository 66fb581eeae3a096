import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_lmlab(*args, cwd=None, env=None, timeout=300, check=None):
    """Run the real `lmlab` CLI in a subprocess: real exit codes, real stderr."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("LMLAB_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "lmlab", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )
    if check is not None:
        assert proc.returncode == check, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def lmlab_cli():
    return run_lmlab


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LMLAB_RUNS_DIR", str(tmp_path / "runs"))
