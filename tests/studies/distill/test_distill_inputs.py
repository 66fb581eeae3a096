"""Bad input gives one clear line; the environment maps onto config keys with a documented order."""

import json

import numpy as np
import pytest

import lmlab.studies.distill  # noqa: F401  (registers the recipe)
from lmlab.config import profile_dirs, resolve
from lmlab.errors import LmlabError
from lmlab.studies.distill.cli import resolve_train_config, seeds_to_run
from lmlab.studies.distill.config import DistillArgs, env_seeds, env_settings
from lmlab.studies.distill.recipe import DistillRecipe
from lmlab.studies.distill.teacher import files_texts, hf_texts, load_npy, split_sentences
from lmlab.train.config import TrainConfig
from tests.conftest import ROOT


def prepare(tmp_path, emb, **args):
    path = tmp_path / "t.npy"
    np.save(path, emb)
    cfg = resolve_train_config(
        None,
        [f"recipe_args.teacher_npy={path}"] + [f"recipe_args.{k}={v}" for k, v in args.items()],
        None,
        no_env=True,
    )
    return DistillRecipe().prepare(cfg, cfg.args())


def test_teacher_with_nans_or_one_row_is_refused(tmp_path):
    emb = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    emb[7, 2] = np.nan
    with pytest.raises(LmlabError, match=r"1 row\(s\) hold NaN or inf \(first: row 7\)"):
        prepare(tmp_path, emb)
    with pytest.raises(LmlabError, match="the teacher has 1 row"):
        prepare(tmp_path, np.ones((1, 4), dtype=np.float32))
    with pytest.raises(LmlabError, match="2-D matrix"):
        prepare(tmp_path, np.ones(5, dtype=np.float32))


def test_k_not_below_n_is_refused(tmp_path):
    emb = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    with pytest.raises(
        LmlabError, match=r"recipe_args.k=20 but the teacher has 20 items: at most 19"
    ):
        prepare(tmp_path, emb, k=20)
    _, tok, p = prepare(tmp_path, emb, k=19, eval_k=5)
    assert tok is None and p.knn_idx.shape == (20, 19)
    assert not set(p.train_ids) & set(p.query_ids)  # queries are never anchors


def test_unknown_filter_mode_names_the_choices():
    with pytest.raises(LmlabError, match="false_neg_mode: unknown false-negative filter 'soft'"):
        resolve_train_config(None, ["recipe_args.false_neg_mode=soft"], None, no_env=True)


def test_env_var_not_a_number_is_refused(monkeypatch):
    monkeypatch.setenv("TRACK_B_TAU", "warm")
    with pytest.raises(LmlabError, match="environment variable TRACK_B_TAU='warm' is not a number"):
        resolve_train_config(None, [], None, no_env=False)
    assert resolve_train_config(None, [], None, no_env=True).recipe_args["tau"] == 0.07
    with pytest.raises(LmlabError, match="SEEDS='x' is not an integer"):
        env_seeds({"SEEDS": "0,x"})
    with pytest.raises(LmlabError, match="TRACK_B_K='5.5' is not an integer"):
        env_settings({"TRACK_B_K": "5.5"})


def test_precedence_defaults_env_then_set(monkeypatch):
    monkeypatch.setenv("TRACK_B_TAU", "0.05")
    monkeypatch.setenv("TRACK_B_M", "64")
    monkeypatch.setenv("STEPS", "300")
    monkeypatch.setenv("WARMUP_STEPS", "30")
    monkeypatch.setenv("AMP", "none")
    monkeypatch.setenv("SEEDS", "0,1,2")
    cfg = resolve_train_config(None, [], None, no_env=False)
    assert (cfg.recipe_args["tau"], cfg.recipe_args["neg_m"], cfg.steps) == (0.05, 64, 300)
    assert cfg.schedule.warmup_steps == 30 and cfg.dtype == "fp32"
    assert cfg.recipe_args["k"] == 50 and cfg.optim.lr == 0.0005  # the seed's defaults
    cfg = resolve_train_config(None, ["recipe_args.tau=0.1"], None, no_env=False)
    assert cfg.recipe_args["tau"] == 0.1  # --set beats the environment
    assert seeds_to_run(None, [], 0, no_env=False) == [0, 1, 2]
    assert seeds_to_run(None, ["seed=5"], 5, no_env=False) == [5]  # a sweep's seed wins
    monkeypatch.setenv("TRACK_B_NEG_M", "128")
    with pytest.raises(LmlabError, match="TRACK_B_NEG_M=128 and TRACK_B_M=64 disagree"):
        resolve_train_config(None, [], None, no_env=False)


def test_cli_bad_teacher_is_one_line(tmp_path, lmlab_cli):
    emb = np.full((10, 3), np.nan, dtype=np.float32)
    np.save(tmp_path / "bad.npy", emb)
    proc = lmlab_cli(
        "distill",
        "train",
        "--no-env",
        "--npy",
        tmp_path / "bad.npy",
        "--set",
        "steps=5",
        "--set",
        "schedule.warmup_steps=0",
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "NaN" in proc.stderr and "bad.npy" in proc.stderr


def test_texts_from_files_jsonl_and_a_dataset_column(tmp_path):
    (tmp_path / "a.md").write_text(
        "- Tags:: #kitchen\n- Grind medium fine. Bloom for thirty seconds.\n"
    )
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "A row of text to embed."}) + "\n")
    got = files_texts([tmp_path], "text", sentences=True, min_chars=12)
    assert got == ["Grind medium fine.", "Bloom for thirty seconds.", "A row of text to embed."]
    (tmp_path / "bad.jsonl").write_text('{"text": "fine text here"}\n{"body": 1}\n')
    with pytest.raises(LmlabError, match=r"bad.jsonl:2: no text field 'text'"):
        files_texts([tmp_path / "bad.jsonl"], "text", True, 12)
    pq = tmp_path / "d.parquet"
    import polars as pl

    pl.DataFrame(
        {"body": ["First sentence here. Second sentence here.", "Third one is here."]}
    ).write_parquet(pq)
    args = DistillArgs(hf_dataset=str(pq), hf_column="body")
    assert hf_texts(args) == ["First sentence here.", "Second sentence here.", "Third one is here."]
    with pytest.raises(LmlabError, match="hf_column 'text' is not a column"):
        hf_texts(DistillArgs(hf_dataset=str(pq)))
    chat = "user: What colour is the cat?\nassistant: Red. It is red, of course.\n<dialogue>"
    assert split_sentences(chat) == ["What colour is the cat?", "It is red, of course."]
    with pytest.raises(LmlabError, match="not a readable .npy"):
        (tmp_path / "x.npy").write_text("nope")
        load_npy(tmp_path / "x.npy")


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "distill").glob("*.yaml")), ids=str)
def test_shipped_distill_configs_validate(path):
    cfg = resolve_train_config(path, [], None, no_env=True)
    assert cfg.recipe == "distill" and cfg.args().source_given()
    # also as `lmlab train --profile track-b -c FILE` (the core's command)
    plain = resolve(TrainConfig, profile="track-b", config=path, profile_dirs=profile_dirs())
    assert plain.recipe_args == cfg.recipe_args
