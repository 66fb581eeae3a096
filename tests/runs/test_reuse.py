import json

import pytest

from lmlab.runs.reuse import BUILD_FILE, read_build_key, reuse_or_build


def _build(text):
    def build(tmp):
        (tmp / "data.txt").write_text(text)
        return text

    return build


def test_built_reused_then_rebuilt_naming_what_changed(tmp_path):
    out = tmp_path / "cache"
    first = reuse_or_build(out, {"v": 1, "seed": 0, "files": ("a",)}, _build("one"))
    assert (first.state, first.reason, first.value) == ("built", "", "one")
    assert read_build_key(out) == {"v": 1, "seed": 0, "files": ["a"]}
    again = reuse_or_build(out, {"v": 1, "seed": 0, "files": ("a",)}, _build("two"))
    assert (again.state, again.value) == ("reused", None)
    assert (out / "data.txt").read_text() == "one"  # nothing was built
    moved = reuse_or_build(out, {"v": 1, "seed": 1, "files": ("a", "b")}, _build("three"))
    assert (moved.state, moved.reason) == ("rebuilt", "changed: files, seed")
    assert (out / "data.txt").read_text() == "three"
    forced = reuse_or_build(out, {"v": 1, "seed": 1, "files": ("a", "b")}, _build("4"), force=True)
    assert (forced.state, forced.reason) == ("rebuilt", "forced")


def test_a_folder_without_build_key_or_incomplete_is_unfinished(tmp_path):
    out = tmp_path / "cache"
    out.mkdir()
    (out / "half.txt").write_text("x")
    got = reuse_or_build(out, {"v": 1}, _build("full"))
    assert (got.state, got.reason) == ("rebuilt", "unfinished")
    assert sorted(p.name for p in out.iterdir()) == [BUILD_FILE, "data.txt"]
    (out / "data.txt").unlink()
    got = reuse_or_build(
        out, {"v": 1}, _build("back"), complete=lambda p: (p / "data.txt").exists()
    )
    assert (got.state, got.reason, (out / "data.txt").read_text()) == (
        "rebuilt",
        "unfinished",
        "back",
    )


def test_a_build_that_raises_leaves_the_previous_output(tmp_path):
    out = tmp_path / "cache"
    reuse_or_build(out, {"v": 1}, _build("good"))

    def broken(tmp):
        (tmp / "data.txt").write_text("half")
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError, match="went away"):
        reuse_or_build(out, {"v": 2}, broken)
    assert (out / "data.txt").read_text() == "good"
    assert json.loads((out / BUILD_FILE).read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
