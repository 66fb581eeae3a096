import os
import stat

import pytest

from lmlab.paths import atomic_dir, atomic_file, atomic_write_text, current_umask


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_file_follows_the_umask_not_mkstemp(tmp_path, umask_022):
    assert current_umask() == 0o022
    atomic_write_text(tmp_path / "a" / "status.json", "{}")
    assert (tmp_path / "a" / "status.json").read_text() == "{}"
    assert _mode(tmp_path / "a" / "status.json") == 0o644
    os.umask(0o077)
    atomic_write_text(tmp_path / "private.txt", "x")
    assert _mode(tmp_path / "private.txt") == 0o600


def test_failed_file_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_dir_swap_replaces_the_old_dir_with_umask_mode(tmp_path, umask_022):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "stale.bin").write_text("old")
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target and not any(tmp.iterdir())
        (tmp / "model.bin").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["model.bin"]
    assert _mode(target) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no .tmp-/.old- left


def test_dir_swap_leaves_the_old_dir_intact_if_the_body_raises(tmp_path):
    target = tmp_path / "cache"
    target.mkdir()
    (target / "meta.json").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "meta.json").write_text("new")
        raise KeyboardInterrupt
    assert (target / "meta.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_dir_swap_creates_a_missing_target(tmp_path):
    with atomic_dir(tmp_path / "deep" / "tok") as tmp:
        (tmp / "tokenizer.json").write_text("{}")
    assert (tmp_path / "deep" / "tok" / "tokenizer.json").read_text() == "{}"


def test_run_files_and_checkpoints_are_readable_by_others(tmp_path, umask_022):
    import torch

    from lmlab.model.checkpoint import save_checkpoint
    from lmlab.runs.rundir import RunDir

    run = RunDir.create({"x": 1}, name="modes", root=tmp_path)
    with run.running():
        run.log(1, loss=1.0)
    ckpt = save_checkpoint(run.checkpoints / "latest", torch.nn.Linear(2, 2), {"step": 1})
    for p in (run.config_path, run.status_path, run.path / "metrics.parquet"):
        assert _mode(p) == 0o644, p
    assert _mode(ckpt) == 0o755
    assert {p.name: _mode(p) for p in ckpt.iterdir()} == {
        "model.safetensors": 0o644,
        "meta.json": 0o644,
    }
