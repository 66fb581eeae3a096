from pathlib import Path

import pytest
from pydantic import Field

from lmlab import config as C
from lmlab.errors import LmlabError


class Optim(C.Strict):
    lr: float = 1e-3
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.95])


class Cfg(C.Strict):
    name: str = "x"
    steps: int = 10
    optim: Optim = Field(default_factory=Optim)
    extra: dict[str, int] = Field(default_factory=dict)


def test_set_overrides_are_typed_and_parse_yaml(tmp_path):
    cfg = C.resolve(
        Cfg, sets=["steps=42", "optim.lr=3e-4", "optim.betas=[0.8, 0.9]", "extra={a: 1}"]
    )
    assert cfg.steps == 42 and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.optim.betas == [0.8, 0.9] and cfg.extra == {"a": 1}


def test_order_defaults_profile_file_set(tmp_path):
    prof = tmp_path / "profiles"
    prof.mkdir()
    (prof / "fast.yaml").write_text("# Fast steps for tests\nsteps: 5\noptim: {lr: 0.1}\n")
    f = tmp_path / "c.json"
    f.write_text('{"steps": 7}')
    cfg = C.resolve(Cfg, profile="fast", config=f, sets=["name=y"], profile_dirs=[prof])
    assert (cfg.steps, cfg.optim.lr, cfg.name) == (7, 0.1, "y")
    assert C.list_profiles([prof]) == [("fast", "Fast steps for tests", prof / "fast.yaml")]


def test_unknown_key_names_dotted_path_and_close_names():
    with pytest.raises(LmlabError) as e:
        C.resolve(Cfg, sets=["optim.lrr=0.1"])
    msg = str(e.value)
    assert "optim.lrr" in msg and "did you mean lr" in msg and "\n" not in msg


def test_wrong_type_names_key():
    with pytest.raises(LmlabError, match=r"steps: .*integer"):
        C.resolve(Cfg, sets=["steps=many"])


def test_malformed_yaml_names_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("steps: 3\noptim:\n  lr: [1, 2\nname: z\n")
    with pytest.raises(LmlabError) as e:
        C.load_file(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}:") and "invalid YAML" in msg
    line = int(msg[len(str(f)) + 1 :].split(":")[0])
    assert line in (3, 4)  # the unclosed list starts on 3; the parser notices on 4


def test_non_mapping_and_missing_file(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(LmlabError, match="expected a mapping"):
        C.load_file(f)
    with pytest.raises(LmlabError, match="config file not found"):
        C.load_file(tmp_path / "nope.yaml")


def test_unknown_profile_lists_available(tmp_path):
    (tmp_path / "smoke.yaml").write_text("# tiny\nsteps: 1\n")
    with pytest.raises(LmlabError, match="unknown profile 'smok'.*did you mean smoke"):
        C.load_profile("smok", [tmp_path])


def test_config_hash_stable_and_sensitive():
    a, b = Cfg(), Cfg(steps=11)
    assert C.config_hash(a) == C.config_hash(Cfg()) and len(C.config_hash(a)) == 8
    assert C.config_hash(a) != C.config_hash(b)


def test_every_shipped_profile_is_described():
    for name, desc, path in C.list_profiles():
        assert desc, f"profile {name} ({path}) needs a first-line '# description'"
        assert isinstance(C.load_file(path), dict)


def test_set_requires_equals():
    with pytest.raises(LmlabError, match="KEY.PATH=VALUE"):
        C.parse_set("steps")
    assert Path(C.PROFILE_DIR).is_dir()


def test_profile_folders_register_by_group(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "_PROFILE_DIRS", {"train": [C.PROFILE_DIR]})
    for group, name in (("train", "mine"), ("study", "own")):
        (tmp_path / group).mkdir()
        (tmp_path / group / f"{name}.yaml").write_text(f"# {name}\nname: {name}\n")
        C.register_profile_dir(tmp_path / group, group=group)
        C.register_profile_dir(tmp_path / group, group=group)  # twice: still once
    assert C.profile_dirs() == [C.PROFILE_DIR, tmp_path / "train"]
    assert C.profile_dirs("study") == [tmp_path / "study"] and C.profile_dirs("none") == []
    assert C.resolve(Cfg, profile="mine", profile_dirs=C.profile_dirs()).name == "mine"
    with pytest.raises(LmlabError, match="unknown profile 'own'"):
        C.load_profile("own", C.profile_dirs())
    assert C.load_profile("own", C.profile_dirs("study")) == {"name": "own"}


def test_studies_register_their_profiles_at_import():
    import lmlab.cli  # noqa: F401  (mounts, so imports, every study)
    from lmlab.studies.notes.paths import PROFILE_DIR as NOTES
    from lmlab.studies.retrieval.spec import PROFILE_DIR as RETRIEVAL

    train = {name: path.parent for name, _, path in C.list_profiles(C.profile_dirs())}
    assert train["kv-demo"] == RETRIEVAL and train["smoke"] == C.PROFILE_DIR
    assert NOTES not in C.profile_dirs() and C.profile_dirs("notes") == [NOTES]
