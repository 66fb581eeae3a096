"""The kvpress engine on a tiny random Llama (built and saved here, with a word-level tokenizer
trained here: nothing is downloaded). kvpress pins transformers<5.3, so this file runs in its own
environment (`make test-kvpress`); where kvpress is absent it is skipped."""

import json
import sqlite3

import pytest
from conftest import SANITY_DATA

from lmlab.errors import LmlabError
from lmlab.studies.kvbench.config import PolicyOptions
from lmlab.studies.kvbench.pipeline import Bench, load_config

kvpress = pytest.importorskip(
    "kvpress",
    reason="kvpress is not installed (it pins transformers<5.3): `make test-kvpress` runs this "
    "file in its own environment, .venv-kvpress",
)
from kvpress.utils import compute_n_kept  # noqa: E402

from lmlab.studies.kvbench.kvpress_engine import PRESSES, make_press  # noqa: E402

POLICIES = list(PRESSES)
SPECIALS = ["<unk>", "<s>", "</s>"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """A 2-layer random LlamaForCausalLM (GQA: 4 query heads, 2 KV heads) with a word-level
    tokenizer over the sanity data's words, saved with save_pretrained."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    rows = [json.loads(line) for line in SANITY_DATA.read_text().splitlines()]
    words = sorted(
        {w for r in rows for w in (r["context"] + r["question"] + " ".join(r["answers"])).split()}
    )
    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tok.save_pretrained(out)
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger than HF's 0.02 init, so that every KV position counts
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.3)
    model.save_pretrained(out)
    return out


def kvpress_bench(tiny, model_dir, **over) -> Bench:
    path = tiny(
        **{
            "engine": {"kind": "kvpress", "model": str(model_dir)},
            "generation.kv_suffix": "question",
            "grid.options": {"window": 4, "kernel": 3, "sinks": 2},
            **over,
        }
    )
    return Bench(load_config(path, None), source=str(path), echo=lambda s: None)


def cell_rows(bench: Bench) -> list[dict]:
    conn = sqlite3.connect(bench.out / "kvbench.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return [
            dict(r)
            for r in conn.execute(
                "SELECT u.policy, u.budget, u.verified, q.example_id, q.kv_suffix, r.text, "
                "r.error, t.prompt_tokens, t.kv_retained, t.kv_bytes_kept, t.kv_bytes_full "
                "FROM runs u JOIN requests q USING (run_id) JOIN responses r USING (request_id) "
                "JOIN telemetry t USING (request_id)"
            )
        ]
    finally:
        conn.close()


def test_each_policy_is_its_kvpress_press_with_compression_ratio_one_minus_budget():
    opts = PolicyOptions(window=8, kernel=3, sinks=2)
    for policy, name in PRESSES.items():
        for budget in (0.7, 0.5, 0.2):
            press = make_press(policy, budget, opts, seed=3)
            assert type(press).__name__ == name
            assert press.compression_ratio == pytest.approx(1.0 - budget)
        assert make_press(policy, 1.0, opts) is None
    snap = make_press("snapkv", 0.5, opts)
    assert (snap.window_size, snap.kernel_size) == (8, 3)
    assert make_press("streamingllm", 0.5, opts).n_sink == 2
    assert make_press("random", 0.5, opts, seed=3).seed == 3
    assert make_press("full", 0.2, opts) is None
    with pytest.raises(LmlabError, match="grid.options.pooling: kvpress's SnapKV pools with avg"):
        make_press("snapkv", 0.5, PolicyOptions(pooling="max"))


def test_every_press_at_every_budget_on_a_tiny_llama_keeps_what_kvpress_says(tiny, hf_model):
    bench = kvpress_bench(
        tiny, hf_model, **{"grid.policies": POLICIES, "grid.budgets": [1.0, 0.5, 0.2]}
    )
    assert bench.all() == ["done"] * 5
    rows = cell_rows(bench)
    examples = {r["example_id"] for r in rows}
    assert len(examples) == 4 and len(rows) == 4 * (1 + len(POLICIES) * 3)
    assert not [r["error"] for r in rows if r["error"]]
    full = {r["example_id"]: r["text"] for r in rows if r["policy"] == "full"}
    changed = {}
    for r in rows:
        n, s = r["prompt_tokens"], r["kv_suffix"]
        kept = json.loads(r["kv_retained"])
        assert 0 < s < n
        if r["budget"] == 1.0:
            assert kept == [n, n], r
            assert r["verified"] == "reference (nothing to compress)"
            continue
        # measured from the cache kvpress left: its floor rule on the context, the question whole
        want = compute_n_kept(n - s, 1.0 - r["budget"]) + s
        assert kept == [want, want] and want < n, r
        assert r["kv_bytes_kept"] * n == r["kv_bytes_full"] * want
        assert r["verified"].startswith(("applied", "verified")), r["verified"]
        key = (r["policy"], r["budget"])
        changed[key] = changed.get(key, 0) + (r["text"] != full[r["example_id"]])
    # the compressed cache changes what the model answers (4/4 in every cell at torch 2.13)
    assert len(changed) == len(POLICIES) * 2 and min(changed.values()) >= 3, changed
    assert (
        "applied: fewer KV positions than the prompt kept on 4/4"
        in (bench.out / "report.md").read_text()
    )


def test_a_one_token_answer_read_from_the_full_prefill_fails_the_no_effect_check(tiny, hf_model):
    # kv_suffix 0: the first token comes from the full prefill, so whatever the press drops
    # cannot change a 1-token answer; the cache is compressed all the same
    bench = kvpress_bench(
        tiny,
        hf_model,
        **{
            "generation.kv_suffix": 0,
            "dataset.max_new_tokens": 1,
            "grid.policies": ["snapkv", "streamingllm"],
            "grid.budgets": [1.0, 0.2],
        },
    )
    bench.stage("prepare")
    with pytest.raises(LmlabError, match="stage run: the budgets had no effect"):
        bench.stage("run")
    rows = [r for r in cell_rows(bench) if r["budget"] < 1.0]
    assert rows and all(r["verified"] == "FAILED: budgets had no effect" for r in rows)
    for r in rows:
        n = r["prompt_tokens"]
        assert json.loads(r["kv_retained"]) == [compute_n_kept(n, 0.8)] * 2


def test_a_prompt_over_the_context_fails_without_truncation_and_is_cut_in_the_middle_with(
    hf_model,
):
    from lmlab.studies.kvbench.config import GenerationOptions, KvpressEngine
    from lmlab.studies.kvbench.engines import Item
    from lmlab.studies.kvbench.kvpress_engine import KvpressBench

    engine = KvpressBench(KvpressEngine(model=str(hf_model)))
    prompt = " ".join(["the kitchen"] * 300)  # BOS + 600 tokens; 512 positions - 4 new = 508
    assert engine.fit(prompt, 4, "middle") == (508, 601)
    item = Item("r", "e", prompt, 4, kv_suffix=2)
    cut = GenerationOptions(truncate="none")
    [(_, reply)] = engine.run_cell([item], "snapkv", 0.5, PolicyOptions(window=4), cut)
    assert reply.error_type == "CONTEXT_LENGTH_EXCEEDED"
    assert reply.error == "prompt of 601 tokens exceeds the context of 512 by 93"
    [(_, reply)] = engine.run_cell(
        [item],
        "snapkv",
        0.5,
        PolicyOptions(window=4),
        cut.model_copy(update={"truncate": "middle"}),
    )
    assert reply.error is None and reply.prompt_tokens == 508
    assert reply.kv_retained == [compute_n_kept(506, 0.5) + 2] * 2 == [255, 255]


def test_generation_stops_at_the_models_eos_and_samples_from_its_seed(hf_model):
    from lmlab.studies.kvbench.config import GenerationOptions, KvpressEngine
    from lmlab.studies.kvbench.engines import Item
    from lmlab.studies.kvbench.kvpress_engine import KvpressBench

    engine = KvpressBench(KvpressEngine(model=str(hf_model)))
    item = Item("r", "e", json.loads(SANITY_DATA.read_text().splitlines()[0])["context"], 4, 3)

    def answer(**gen):
        [(_, reply)] = engine.run_cell(
            [item], "knorm", 0.5, PolicyOptions(), GenerationOptions(**gen)
        )
        return reply

    greedy = answer()
    assert greedy.finish_reason == "length" and greedy.completion_tokens == 4
    first = engine.tok(greedy.text.split()[0], add_special_tokens=False).input_ids
    engine.model.generation_config.eos_token_id = first[0]  # the first answer token now ends it
    stopped = answer()
    assert (stopped.finish_reason, stopped.text, stopped.completion_tokens) == ("stop", "", 0)
    engine.model.generation_config.eos_token_id = engine.tok.eos_token_id
    sampled = [answer(temperature=1.5, seed=s).text for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] and greedy.text not in sampled[:2]
