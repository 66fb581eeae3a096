from pathlib import Path

import pytest

from lmlab.runs.sweep import load_sweep, plan
from tests.conftest import ROOT

SWEEPS = sorted((ROOT / "configs").glob("**/sweeps/*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweep_files_validate_and_plan(path, tmp_path):
    spec, root = load_sweep(path)
    runs = plan(spec, root, Path(tmp_path))
    assert runs and len({r.run_dir for r in runs}) == len(runs)


def test_there_are_shipped_sweeps():
    assert SWEEPS
