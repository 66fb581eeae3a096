"""Scenario specs, buckets and Wilson intervals: the study's arithmetic."""

import math
from pathlib import Path

import pytest
import yaml

from lmlab.config import load_file, validate
from lmlab.errors import LmlabError
from lmlab.studies.retrieval import buckets as B
from lmlab.studies.retrieval.spec import (
    DEFAULT_SPEC,
    DEMO_SPEC,
    PROFILE_DIR,
    load_spec,
    valid_query_indices,
)
from lmlab.studies.retrieval.words import builtin_words
from lmlab.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[3]


def test_shipped_specs_and_recipes_validate():
    seed = load_spec()
    assert [s.name for s in seed.scenarios] == [
        "baseline_mixed",
        "short_only",
        "front_key_bias",
        "end_key_bias",
    ]
    assert (seed.eval.min_pairs, seed.eval.max_pairs) == (4, 200)
    assert seed.scenarios[1].max_pairs == 32 and seed.scenarios[0].pairs_weighting == "linear"
    demo = load_spec(base=DEMO_SPEC)
    assert demo.tokenizer.kind == "word" and demo.eval.queries_per_sample == 1
    recipes = sorted(PROFILE_DIR.glob("*.yaml"))
    assert {p.stem for p in recipes} >= {"kv-demo", "kv-seed"}
    for path in recipes:
        cfg = validate(TrainConfig, load_file(path), str(path))
        assert cfg.data.use_mask and cfg.data.doc_rows, path  # answers only, one sample a row
    assert DEFAULT_SPEC.exists()
    examples = sorted((ROOT / "configs" / "retrieval").glob("*.yaml"))
    assert examples
    for path in examples:
        spec = load_spec(path)
        assert spec.scenarios and spec.eval.max_pairs == 200, path


@pytest.mark.parametrize(
    "scenario, needle",
    [
        ({"name": "x", "min_pairs": 40, "max_pairs": 32}, "min_pairs 40 > max_pairs 32"),
        ({"name": "x", "min_pairs": 4, "max_pairs": 8, "query_position": [0.3, 0.31]}, "no key"),
        ({"name": "x", "query_position": [0.5, 0.5]}, "0 <= low < high <= 1"),
    ],
)
def test_impossible_scenarios_are_refused(tmp_path, scenario, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"scenarios": [scenario], "tokenizer": {"kind": "word"}}))
    with pytest.raises(LmlabError) as e:
        load_spec(path)
    assert needle in str(e.value) and "impossible range" in str(e.value)
    assert str(path) in str(e.value)  # names the file at fault


def test_impossible_range_from_the_cli_is_one_line(tmp_path, lmlab_cli):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"scenarios": [{"name": "x", "min_pairs": 9, "max_pairs": 3}]}))
    proc = lmlab_cli("retrieval", "generate", "--out", tmp_path / "d", "--scenarios", path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error:") and "impossible range" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "d").exists()


def test_position_ranges_match_the_report_buckets():
    for n in range(2, 80):
        front = valid_query_indices(n, 0.0, 0.25)
        back = valid_query_indices(n, 0.75, 1.0)
        assert front and back
        assert all(B.position_bucket(q / (n - 1)) == "front" for q in front)
        assert all(B.position_bucket(q / (n - 1)) == "back" for q in back)
        assert back == sorted(n - 1 - q for q in front)  # symmetric
        assert valid_query_indices(n, 0.0, 1.0) == list(range(n))


def test_buckets_edges():
    assert [B.length_bucket(n) for n in (1, 16, 17, 64, 65, 128, 129, 500)] == [
        "<=16", "<=16", "17-64", "17-64", "65-128", "65-128", ">128", ">128"
    ]  # fmt: skip
    assert [B.position_bucket(p) for p in (0.0, 0.2499, 0.25, 0.75, 0.7501, 1.0)] == [
        "front", "front", "middle", "middle", "back", "back"
    ]  # fmt: skip


def test_wilson_interval_values():
    # reference values: 81/263 is Newcombe (1998) Stat Med 17:857, table I, method 3
    lo, hi = B.wilson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = B.wilson(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and round(hi, 4) == 0.2775
    lo, hi = B.wilson(10, 10)
    assert round(lo, 4) == 0.7225 and hi == pytest.approx(1.0)
    lo, hi = B.wilson(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    assert all(math.isnan(v) for v in B.wilson(0, 0))
    # narrower with more samples at the same rate
    assert B.wilson(500, 1000)[1] - B.wilson(500, 1000)[0] < hi - lo


def test_builtin_words_are_distinct_and_deterministic():
    a = builtin_words(3000, seed=0)
    assert len(set(a)) == 3000 and a == builtin_words(3000, seed=0)
    assert a[:50] != builtin_words(3000, seed=1)[:50]
    assert all(w.isalpha() and w.islower() for w in a)


def test_word_list_sources(tmp_path):
    from lmlab.studies.retrieval.spec import WordsSpec
    from lmlab.studies.retrieval.words import load_words

    path = tmp_path / "words.txt"
    path.write_text("apple\npear\n\napple\nplum\nfig\n")
    assert load_words(WordsSpec(source="file", path=str(path), count=3)) == [
        "apple",
        "pear",
        "plum",
    ]
    path.write_text("apple\ntwo words\n")
    with pytest.raises(LmlabError, match=r"words.txt:2: .*whitespace"):
        load_words(WordsSpec(source="file", path=str(path)))
    path.write_text("apple\nQ\n")
    with pytest.raises(LmlabError, match="reserved"):
        load_words(WordsSpec(source="file", path=str(path)))
    # a Hugging Face dataset through datasets.load_dataset, here a local file in the same schema
    hf = tmp_path / "words.jsonl"
    hf.write_text("".join(f'{{"word": "w{i}", "n": {i}}}\n' for i in range(30)))
    got = load_words(WordsSpec(source="hf", hf_dataset=str(hf), count=10))
    assert got == [f"w{i}" for i in range(10)]
    with pytest.raises(LmlabError, match="no column 'lemma'"):
        load_words(WordsSpec(source="hf", hf_dataset=str(hf), hf_column="lemma"))


def test_expected_effects_need_disjoint_intervals():
    from lmlab.studies.retrieval.compare import better_than, expected_effects

    def cell(k, n):
        return {"accuracy": k / n, "ci95": list(B.wilson(k, n)), "n": n, "correct": k}

    assert better_than(cell(90, 100), cell(10, 100)) == "yes"
    assert better_than(cell(3, 32), cell(0, 8)) == "not significant"  # 9% vs 0% on few samples
    assert better_than(cell(1, 10), cell(5, 10)) == "no"
    assert better_than(cell(1, 10), {"n": 0, "accuracy": None, "ci95": None}) == "-"
    empty = {"n": 0, "accuracy": None, "ci95": None, "correct": 0}
    lengths = {"<=16": cell(95, 100), "17-64": cell(20, 100), "65-128": empty, ">128": empty}
    positions = {"front": cell(50, 100), "middle": cell(50, 100), "back": cell(10, 100)}
    summary = {"overall": cell(115, 200), "by_length": lengths, "by_position": positions}
    rows = expected_effects(
        {name: {"summary": summary} for name in ("baseline_mixed", "short_only", "front_key_bias")}
    )
    holds = {row[0].split(":")[0]: row[2] for row in rows}
    assert holds["baseline_mixed reaches >= 90% on <= 16 pairs"] == "yes"
    assert holds["front_key_bias"] == "yes" and holds["end_key_bias"] == "-"
    assert holds["short_only falls off on longer contexts"] == "yes"
    assert "17-64" in rows[-1][1]
