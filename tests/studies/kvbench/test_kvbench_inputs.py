"""Datasets in each schema, bins and sampling, shipped configs, and bad input -> one clear line."""

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import ROOT, db_counts

from lmlab.config import validate
from lmlab.errors import LmlabError
from lmlab.studies.kvbench import datasets as D
from lmlab.studies.kvbench.config import (
    BinsConfig,
    DatasetConfig,
    KvbenchConfig,
    SamplingConfig,
)
from lmlab.studies.kvbench.longbench import PROMPTS
from lmlab.studies.kvbench.pipeline import Bench, load_config
from lmlab.studies.kvbench.prepare import assign_bin, bin_edges, sample

CONFIGS = sorted((ROOT / "configs" / "kvbench").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path, None)
    assert cfg.grid.budgets and cfg.exp_group_id


def test_the_shipped_set_covers_the_seed_profiles():
    names = {p.stem for p in CONFIGS}
    assert {"sanity", "submission", "retrieval", "focus_transition"} <= names
    sub = load_config(ROOT / "configs/kvbench/submission.yaml", None)
    assert (sub.dataset.kind, sub.dataset.task) == ("longbench", "narrativeqa")
    assert (sub.bins.count, sub.sampling.n_per_bin, sub.grid.budgets) == (5, 2, [1.0, 0.5, 0.2])
    assert len(sub.grid.policies) == 1


def _longbench_rows(n=6):
    return [
        {
            "input": f"Who owns lamp {i}?",
            "context": "word " * (20 * (i + 1)) + f"Lamp {i} belongs to Ada{i}.",
            "answers": [f"Ada{i}"],
            "length": 20 * (i + 1),
            "dataset": "narrativeqa",
            "language": "en",
            "all_classes": None,
            "_id": f"lb{i}",
        }
        for i in range(n)
    ]


def test_longbench_rows_through_datasets_with_its_own_template(tmp_path):
    f = tmp_path / "narrativeqa.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in _longbench_rows()))
    ds = DatasetConfig(kind="longbench", task="narrativeqa", files=[str(f)])
    rows = D.load_rows(ds)
    assert [r["example_id"] for r in rows] == [f"lb{i}" for i in range(6)]
    assert rows[2]["dataset_length"] == 60 and rows[2]["answers"] == ["Ada2"]
    prompt = D.render(D.template_for(ds), rows[0])
    assert prompt.startswith("You are given a story") and prompt.endswith(
        "Question: Who owns lamp 0?\n\nAnswer:"
    )
    assert D.max_new_tokens_for(ds) == 128 and D.metric_for(ds) == "qa_f1"
    assert D.max_new_tokens_for(DatasetConfig(task="hotpotqa")) == 32
    assert set(PROMPTS) >= {"narrativeqa", "qasper", "hotpotqa", "2wikimqa", "musique"}


def test_parquet_table_with_named_fields(tmp_path):
    f = tmp_path / "t.parquet"
    pl.DataFrame(
        {"qid": [1, 2], "doc": ["a b", "c d"], "q": ["x?", "y?"], "gold": [["a"], ["c"]]}
    ).write_parquet(f)
    fields = {"id": "qid", "context": "doc", "question": "q", "answers": "gold", "length": None}
    rows = D.load_rows(DatasetConfig(kind="table", files=[str(f)], fields=fields))
    assert rows[1] == {
        "example_id": "2",
        "context": "c d",
        "question": "y?",
        "answers": ["c"],
        "all_classes": [],
        "dataset_length": None,
    }


def test_retrieval_split_is_read_as_files(tmp_path):
    split = tmp_path / "eval"
    split.mkdir()
    pl.DataFrame(
        {
            "prompt": ["k1 v1\nk2 v2\nQ k2\nA", "k1 v1\nQ k1\nA"],
            "value": ["v2", "v1"],
            "num_pairs": [2, 1],
        }
    ).write_parquet(split / "samples.parquet")
    (split / "manifest.json").write_text(json.dumps({"files": {"samples": "samples.parquet"}}))
    ds = DatasetConfig(kind="retrieval", path=str(split))
    rows = D.load_rows(ds)
    assert rows[0]["answers"] == ["v2"] and rows[0]["dataset_length"] == 2
    assert D.render(D.template_for(ds), rows[0]) == "k1 v1\nk2 v2\nQ k2\nA"
    assert D.metric_for(ds) == "first_word" and D.max_new_tokens_for(ds) == 2


def test_bins_quantile_and_fixed_and_sampling_strategies():
    lengths = list(range(100))
    edges = bin_edges(lengths, BinsConfig(count=4))
    assert edges[0] == 0 and edges[-1] == 99 and len(edges) == 5
    assert assign_bin(0, edges) == 0 and assign_bin(99, edges) == 3
    fixed = bin_edges(lengths, BinsConfig(edges=[0, 10, 50]))
    assert fixed == [0, 10, 50] and assign_bin(60, fixed) is None
    by_bin = {0: [f"a{i}" for i in range(10)], 1: [f"b{i}" for i in range(10)]}
    uni = sample(by_bin, SamplingConfig(n_per_bin=3, seed=1), 2)
    assert [len(v) for v in uni.values()] == [3, 3]
    assert uni == sample(
        {k: v[::-1] for k, v in by_bin.items()}, SamplingConfig(n_per_bin=3, seed=1), 2
    )
    focus = sample(
        by_bin,
        SamplingConfig(
            strategy="focus_transition",
            focus={"bins": [1], "base_n_per_bin": 1, "focus_n_per_bin": 5},
        ),
        2,
    )
    assert [len(focus[0]), len(focus[1])] == [1, 5]
    pinned = sample(by_bin, SamplingConfig(strategy="pinned", ids=["a3", "b7"]), 2)
    assert pinned == {0: ["a3"], 1: ["b7"]}
    with pytest.raises(LmlabError, match="'zz' is not an example id"):
        sample(by_bin, SamplingConfig(strategy="pinned", ids=["zz"]), 2)


# ---- bad input


def _write(tmp_path, data) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"grid": {"budgets": [1.0], "policy": ["snapkv"]}}, r"unknown key 'grid.policy'"),
        ({"engin": {}}, r"unknown key 'engin'"),
        ({"grid": {"budgets": []}}, r"grid.budgets: .*budget list is empty"),
        ({"grid": {"budgets": [1.0, 0.0]}}, r"grid.budgets: .*budget 0.0 is outside \(0, 1\]"),
        ({"grid": {"budgets": [1.5]}}, r"budget 1.5 is outside \(0, 1\]"),
        ({"engine": {"kind": "vllm"}}, r"engine"),
    ],
)
def test_bad_configs_name_the_file_and_key(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(LmlabError, match=rf"{path}.*{message}"):
        load_config(path, None)


def test_bad_config_via_cli_is_one_line_and_exit_1(tmp_path, lmlab_cli):
    path = _write(tmp_path, {"grid": {"budgets": []}, "output": {"dir": str(tmp_path / "o")}})
    proc = lmlab_cli("kvbench", "all", "-c", path)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "budget list is empty" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_a_dataset_file_missing_a_field_writes_nothing(tiny, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "context": "a b c", "answers": ["a"]}) + "\n")
    path = tiny(**{"dataset.files": [str(bad)]})
    bench = Bench(load_config(path, None), source=str(path), echo=lambda s: None)
    with pytest.raises(
        LmlabError, match=rf"{path}: stage prepare: .*bad.jsonl: row 1 has no field 'question'"
    ):
        bench.stage("prepare")
    counts = db_counts(bench.out / "kvbench.sqlite")
    assert all(v == 0 for v in counts.values()), counts


def test_unknown_policy_for_the_engine_is_refused_before_any_row(tiny):
    path = tiny(**{"grid.policies": ["pyramidkv"]})
    bench = Bench(load_config(path, None), source=str(path), echo=lambda s: None)
    bench.stage("prepare")
    with pytest.raises(LmlabError, match=r"stage run: grid.policies: 'pyramidkv' is not offered"):
        bench.stage("run")
    assert db_counts(bench.out / "kvbench.sqlite")["runs"] == 0


def test_config_defaults_validate():
    cfg = validate(KvbenchConfig, {})
    assert cfg.dataset.dataset_id == "longbench__narrativeqa"


def test_kvpress_engine_without_kvpress_says_how_to_get_it(tiny):
    # kvpress pins transformers<5.3, so it is not installed next to lmlab
    try:
        import kvpress  # noqa: F401

        pytest.skip("kvpress is installed here")
    except ImportError:
        pass
    path = tiny(**{"engine": {"kind": "kvpress", "model": "some/model"}})
    bench = Bench(load_config(path, None), source=str(path), echo=lambda s: None)
    with pytest.raises(LmlabError, match=r"stage prepare: .*needs the kvpress package"):
        bench.stage("prepare")
    assert db_counts(bench.out / "kvbench.sqlite")["examples"] == 0


def test_checkpoint_glob_must_match_exactly_one(tmp_path):
    from lmlab.studies.kvbench.engines import resolve_glob

    assert resolve_glob(str(tmp_path / "x")) == tmp_path / "x"
    (tmp_path / "run-s0-aaaa").mkdir()
    assert resolve_glob(str(tmp_path / "run-s0-*")) == tmp_path / "run-s0-aaaa"
    (tmp_path / "run-s0-bbbb").mkdir()
    with pytest.raises(LmlabError, match="matches 2 paths"):
        resolve_glob(str(tmp_path / "run-s0-*"))
