"""The notes config: every shipped profile validates and translates; mixes and cache names are
checked with messages that name the key at fault."""

import pytest
from typer.testing import CliRunner

from lmlab import config as C
from lmlab.errors import LmlabError
from lmlab.studies.notes.cli import notes_app
from lmlab.studies.notes.config import NotesConfig, check_caches, to_train_config
from lmlab.studies.notes.paths import PROFILE_DIR

runner = CliRunner()
PROFILES = [name for name, _, _ in C.list_profiles([PROFILE_DIR])]
FAMILIES = [
    ["smoke-pretrain", "smoke-sft"],
    ["dev", "dev-sft", "pipeline-dev"],
    ["prod", "prod-sft", "pipeline-prod"],
    ["minimal", "minimal-sft"],
]


def resolve(profile=None, sets=()):
    return C.resolve(NotesConfig, profile=profile, sets=list(sets), profile_dirs=[PROFILE_DIR])


def test_the_shipped_profiles_are_the_seeds_ten():
    assert sorted(PROFILES) == sorted(p for family in FAMILIES for p in family)


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_validates_and_translates_into_core_train_configs(name):
    cfg = resolve(name)
    assert C.profile_description(PROFILE_DIR / f"{name}.yaml")
    expected_phase = (
        "pipeline" if name.startswith("pipeline") else "sft" if "sft" in name else "pretrain"
    )
    assert cfg.phase == expected_phase
    for phase, mix in (("pretrain", cfg.data.mix_pretrain), ("sft", cfg.data.mix_sft)):
        assert abs(sum(mix.values()) - 1) < 1e-9
        sources = {f"/caches/{n}": w for n, w in mix.items()}
        train = to_train_config(cfg, phase, sources, init_from="/ckpt" if phase == "sft" else None)
        p = getattr(cfg.training, phase)
        assert train.phase == phase and train.steps == p.total_steps
        assert train.accum_steps(world_size=1) == p.accum_steps
        assert train.dtype == (p.amp_dtype if p.amp else "fp32")
        assert train.optim.lr == p.lr and train.model == cfg.model
    if cfg.data.val_pretrain_source:
        assert cfg.data.val_pretrain_source in cfg.data.mix_pretrain


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f[0])
def test_profiles_of_a_family_differ_only_in_their_default_phase(family):
    """So `--profile dev` then `--profile dev-sft` (or `pipeline-dev`) share one pretrain run."""
    dumps = []
    for name in family:
        data = C.load_file(PROFILE_DIR / f"{name}.yaml")
        data.pop("phase")
        dumps.append(data)
    assert all(d == dumps[0] for d in dumps)


def test_prod_uses_the_public_corpora_and_mixed_precision():
    cfg = resolve("pipeline-prod")
    assert set(cfg.data.mix_pretrain) == {"fineweb_edu", "wikitext", "roam", "primer"}
    assert set(cfg.data.mix_sft) == {"dolly15k", "oasst1", "primer"}
    assert cfg.device == "cuda" and cfg.training.pretrain.amp
    assert cfg.data.val_pretrain_source == "wikitext"


def test_mix_weights_are_normalised_and_zero_leaves_a_cache_out():
    cfg = resolve(sets=["data.mix_pretrain={roam: 3, primer: 1, wikitext: 0}"])
    assert cfg.data.mix_pretrain == {"roam": 0.75, "primer": 0.25}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["data.mix_pretrain={roam: 1, primer: -0.5}"],
            r"data\.mix_pretrain: .*weight of 'primer' is -0\.5; weights must be positive",
        ),
        (["data.mix_sft={primer: 0}"], r"data\.mix_sft: .*at least one cache"),
        (["data.mix_sft={}"], r"data\.mix_sft: .*at least one cache"),
        (
            ["data.mix_pretrian={roam: 1}"],
            r"unknown key 'data\.mix_pretrian'; did you mean mix_pretrain",
        ),
        (["training.pretrain.micro_b=4"], r"unknown key 'training\.pretrain\.micro_b'.*micro_B"),
        (["training.pretrain.init_from=/x"], r"pretraining starts from scratch"),
        (["training.sft.warmup_steps=999"], r"warmup_steps \(999\) exceeds total_steps"),
    ],
)
def test_bad_configs_name_the_key(sets, message):
    with pytest.raises(LmlabError, match=message):
        resolve("dev", sets)


def test_a_mix_naming_a_missing_cache_lists_the_finished_ones(tmp_path):
    for name in ("roam", "primer"):
        for split in ("train", "val"):
            (tmp_path / "pretrain" / name / split).mkdir(parents=True)
            (tmp_path / "pretrain" / name / split / "meta.json").write_text("{}")
    (tmp_path / "pretrain" / "half" / "train").mkdir(parents=True)  # unfinished: no val
    sets = [f"data.caches.pretrain_token_cache={tmp_path / 'pretrain'}"]
    ok = resolve("dev", sets)
    assert set(check_caches(ok, "pretrain")) == {"roam", "primer"}
    bad = resolve("dev", [*sets, "data.mix_pretrain={roam: 1, fineweb_edu: 1, half: 1}"])
    with pytest.raises(LmlabError) as e:
        check_caches(bad, "pretrain")
    msg = str(e.value)
    assert "data.mix_pretrain names the cache(s) fineweb_edu, half" in msg
    assert "finished caches there: primer, roam" in msg and "lmlab cache build-all" in msg
    val = resolve("dev", [*sets, "data.val_pretrain_source=wikitext"])
    with pytest.raises(LmlabError, match="data.val_pretrain_source names the cache"):
        check_caches(val, "pretrain")


def test_cli_lists_profiles_and_prints_the_resolved_config():
    listed = runner.invoke(notes_app, ["train", "--list-profiles"])
    assert listed.exit_code == 0
    for name in PROFILES:
        assert name in listed.output
    assert "Seconds on a CPU" in listed.output
    printed = runner.invoke(
        notes_app,
        [
            "train",
            "--profile",
            "dev",
            "--phase",
            "sft",
            "--set",
            "training.sft.lr=0.0005",
            "--print-config",
        ],
    )
    assert printed.exit_code == 0, printed.output
    cfg = NotesConfig.model_validate(__import__("yaml").safe_load(printed.output))
    assert cfg.phase == "sft" and cfg.training.sft.lr == 0.0005 and cfg.name == "notes-dev"


def test_amp_fp16_translates_to_the_core_fp16_path_with_its_grad_scaler():
    cfg = resolve("dev", ["training.pretrain.amp=true", "training.pretrain.amp_dtype=fp16"])
    assert to_train_config(cfg, "pretrain", {"/x": 1.0}).dtype == "fp16"


def test_paths_names_the_defaults_under_lmlab_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_HOME", str(tmp_path / "home"))
    out = runner.invoke(notes_app, ["paths"]).output
    assert str(tmp_path / "home" / "notes" / "tokenizer") in out
    assert str(tmp_path / "home" / "notes" / "cache") in out and str(PROFILE_DIR) in out
