"""`generation.kv_suffix`: what each dataset prefills after compression reaches the engine, the
retained KV then is ceil(b x (n - N)) + N per layer, and verification counts the suffix. Also the
labelled policy variants (`grid.variants`)."""

import json
import math
import re

import pytest

from lmlab.errors import LmlabError
from lmlab.studies.kvbench import datasets as D
from lmlab.studies.kvbench.config import GridConfig, KvbenchConfig, OpenAIEngine
from lmlab.studies.kvbench.engines import Item, LocalBench
from lmlab.studies.kvbench.openai_engine import OpenAIBench
from lmlab.studies.kvbench.pipeline import Bench, load_config
from lmlab.studies.kvbench.run import budget_status

QUIET = {"echo": lambda s: None}


def bench_for(path, sets=None) -> Bench:
    return Bench(load_config(path, sets), source=str(path), **QUIET)


def test_the_question_suffix_reaches_the_engine_and_is_verified(tiny):
    path = tiny(**{"generation.kv_suffix": "question"})
    bench = bench_for(path)
    assert bench.all() == ["done"] * 5
    conn = bench.conn
    examples = {r[0]: r[1:] for r in conn.execute("SELECT example_id, suffix, suffix_tokens, "
                                                  "prompt FROM examples")}  # fmt: skip
    for suffix, n_suffix, prompt in examples.values():
        # the sanity template is {context}{input}: the question, e.g. " question : where does
        # the teapot81 live ? answer :", is what comes after the context (word tokens)
        assert suffix.startswith(" question :") and prompt.endswith(suffix)
        assert n_suffix == len(suffix.split())
    rows = conn.execute(
        "SELECT u.policy, u.budget, q.example_id, q.kv_suffix, t.prompt_tokens, t.kv_retained "
        "FROM requests q JOIN runs u USING (run_id) JOIN telemetry t USING (request_id)"
    ).fetchall()
    assert len(rows) == 3 * len(examples)
    for policy, budget, ex, sent, n, kept in rows:
        assert sent == examples[ex][1]  # the suffix the engine got is the example's
        want = n if budget == 1.0 else math.ceil(budget * (n - sent)) + sent
        assert json.loads(kept) == [want] * 2, (policy, budget, ex)
        assert want != math.ceil(budget * n) or budget == 1.0  # the suffix made a difference
    verified = dict(conn.execute("SELECT policy || '@' || budget, verified FROM runs"))
    assert verified["snapkv@0.2"].startswith(
        "verified: retained KV = ceil(budget x (prompt - suffix)) + suffix"
    ), verified
    assert "kv_suffix `question`" in (bench.out / "report.md").read_text()


def test_verification_counts_the_suffix():
    rows = [
        {"error_type": None, "prompt_tokens": 40, "kv_suffix": 9, "kv_retained": "[16, 16]"},
        {"error_type": None, "prompt_tokens": 30, "kv_suffix": 9, "kv_retained": "[14, 14]"},
    ]  # ceil(0.2 * 31) + 9 = 16, ceil(0.2 * 21) + 9 = 14
    assert budget_status("snapkv", 0.2, rows).startswith("verified: retained KV = ceil(budget x "
                                                          "(prompt - suffix)) + suffix on 2/2")  # fmt: skip
    # what the rule without a suffix expects (ceil(0.2 * n)) is no longer verified
    old = [{**r, "kv_retained": json.dumps([math.ceil(0.2 * r["prompt_tokens"])] * 2)}
           for r in rows]  # fmt: skip
    assert budget_status("snapkv", 0.2, old).startswith("applied:")
    plain = [{**r, "kv_suffix": 0} for r in old]
    assert budget_status("snapkv", 0.2, plain).startswith(
        "verified: retained KV = ceil(budget x prompt) on 2/2"
    )


def test_a_token_count_suffix_and_changing_it_redoes_prepare(tiny):
    path = tiny()
    assert bench_for(path).all() == ["done"] * 5
    bench = bench_for(path, ["generation.kv_suffix=3"])
    assert bench.all() == ["done"] * 5  # a different split is a different evaluation set
    got = {tuple(r) for r in bench.conn.execute("SELECT suffix, suffix_tokens FROM examples")}
    assert got == {(None, 3)}
    assert {r[0] for r in bench.conn.execute("SELECT kv_suffix FROM requests q JOIN runs u "
                                             "USING (run_id) WHERE u.run_id IN "
                                             f"({','.join('?' * len(bench.run_ids()))})",
                                             bench.run_ids())} == {3}  # fmt: skip


def test_answer_cue_is_the_last_line_and_a_prompt_without_one_is_refused(tiny):
    row = {"example_id": "r0", "context": "k1 v1\nk2 v2\n", "question": "Q k2\nA"}
    prompt = D.render("{context}{input}", row)
    assert D.suffix_text("answer_cue", "{context}{input}", row, prompt) == "A"
    assert D.suffix_text("question", "{context}{input}", row, prompt) == "Q k2\nA"
    assert D.suffix_text(2, "{context}{input}", row, prompt) is None
    # the sanity prompts are one line: no answer cue to split off; nothing is written
    bench = bench_for(tiny(**{"generation.kv_suffix": "answer_cue"}))
    with pytest.raises(LmlabError, match=r"stage prepare: example 's\d+': generation.kv_suffix "
                                         r"'answer_cue' splits no last line"):  # fmt: skip
        bench.stage("prepare")
    assert bench.conn.execute("SELECT COUNT(*) FROM examples").fetchone()[0] == 0


def test_a_suffix_as_long_as_the_prompt_is_refused(tiny):
    bench = bench_for(tiny(**{"generation.kv_suffix": 10_000}))
    with pytest.raises(LmlabError, match="leaves no context to compress"):
        bench.stage("prepare")


def test_openai_sends_kv_suffix_only_when_asked_and_needs_a_tokenizer_for_text():
    eng = OpenAIBench(OpenAIEngine())
    cfg = KvbenchConfig()
    args = ("snapkv", 0.5, cfg.grid.options, cfg.generation)
    _, body = eng._body(Item("r", "e", "ctx\nA", 2, kv_suffix=1, suffix="A"), *args)
    assert body["kv_suffix"] == 1
    _, body = eng._body(Item("r", "e", "ctx\nA", 2), *args)
    assert "kv_suffix" not in body  # a server without the extension may refuse the field
    with pytest.raises(LmlabError, match="needs engine.tokenizer"):
        eng.suffix_tokens("ctx\nA", "A")


def test_policy_variants_run_under_their_label_with_their_options(tiny, monkeypatch):
    seen = {}
    real = LocalBench.run_cell

    def spy(self, items, policy, budget, options, gen):
        seen.setdefault(policy, set()).add(options.window)
        yield from real(self, items, policy, budget, options, gen)

    monkeypatch.setattr(LocalBench, "run_cell", spy)
    path = tiny(**{"grid.policies": ["snapkv", "snapkv_w4"],
                   "grid.variants": {"snapkv_w4": {"policy": "snapkv", "window": 4}}})  # fmt: skip
    bench = bench_for(path)
    assert bench.all() == ["done"] * 5
    assert seen == {"full": {32}, "snapkv": {32, 4}}
    policies = {r[0] for r in bench.conn.execute("SELECT policy FROM bin_stats")}
    assert policies == {"full", "snapkv", "snapkv_w4"}
    report = (bench.out / "report.md").read_text()
    assert "(the `snapkv` policy with window=4)" in report
    # the two compressed policies compared at their shared budget, paired over the 4 examples
    assert re.search(r"\| 0\.2 \| snapkv \| snapkv_w4 \| 4 \| [+-]\d+\.\d \[", report), report
    # a variant of a policy the engine lacks is refused, naming the variant
    bad = tiny(**{"grid.policies": ["odd"], "grid.variants": {"odd": {"policy": "nope"}},
                  "output.dir": str(bench.out.parent / "bad")})  # fmt: skip
    with pytest.raises(LmlabError, match=r"grid.variants.odd.policy: 'nope' is not offered"):
        bench_for(bad).all()


def test_a_variant_needs_its_own_label():
    with pytest.raises(ValueError, match="its own label"):
        GridConfig(policies=["snapkv"], variants={"snapkv": {"policy": "snapkv", "window": 4}})
    assert GridConfig(variants={"w": {"policy": "snapkv", "window": 4}}).resolve("w")[1].window == 4


def test_a_database_from_before_the_suffix_gains_its_columns(tmp_path):
    import sqlite3

    from lmlab.studies.kvbench import db

    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE requests (request_id TEXT PRIMARY KEY, run_id TEXT, example_id TEXT, "
        "prompt_tokens INTEGER, max_new_tokens INTEGER, created_at REAL)"
    )
    old.execute("INSERT INTO requests VALUES ('r', 'u', 'e', 5, 2, 0)")
    old.commit()
    old.close()
    conn = db.connect(path)
    assert conn.execute("SELECT request_id, kv_suffix FROM requests").fetchall()[0][:] == (
        "r",
        None,
    )
    assert "suffix_tokens" in {r[1] for r in conn.execute("PRAGMA table_info(examples)")}
    db.connect(path)  # opening it again adds nothing twice
