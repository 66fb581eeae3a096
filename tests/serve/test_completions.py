"""/v1/completions through the official openai client, checked against the engine itself."""

from __future__ import annotations

import math

import httpx
import pytest

from lmlab.model.engine import GenerationConfig
from tests.serve.conftest import CONTEXT, forward_logprobs


def greedy(reference, ids, max_new, tok, **kw):
    cfg = GenerationConfig(max_new_tokens=max_new, temperature=0.0, stop_tokens=(tok.eot_id,),
                           banned_tokens=(tok.bos_id,), **kw)  # fmt: skip
    (gen,) = reference.generate([ids], cfg)
    return gen


def test_models_and_health(server, client, model_id):
    (card,) = client.models.list().data
    assert card.id == model_id and card.owned_by == "lmlab"
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["max_model_len"] == CONTEXT
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == model_id


def test_completion_equals_the_engines_greedy_output(client, model_id, reference, tok):
    r = client.completions.create(model=model_id, prompt="the cat sat", max_tokens=8, temperature=0)
    ids = [tok.bos_id, *tok.encode("the cat sat")]
    gen = greedy(reference, ids, 8, tok)
    (choice,) = r.choices
    assert choice.text == gen.text
    assert choice.finish_reason == gen.finish_reason == "length"
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == len(gen.tokens) == 8
    assert r.usage.total_tokens == len(ids) + 8
    assert r.object == "text_completion" and r.model == model_id


def test_token_prompts_and_prompt_batches(client, model_id, reference, tok):
    a, b = tok.encode("the dog ran"), tok.encode("birds sang in the red trees")
    r = client.completions.create(model=model_id, prompt=[a, b], max_tokens=5, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.text for c in r.choices] == [greedy(reference, p, 5, tok).text for p in (a, b)]
    assert r.usage.prompt_tokens == len(a) + len(b)
    texts = client.completions.create(model=model_id, prompt=["the dog", "a mat"], max_tokens=3,
                                      temperature=0)  # fmt: skip
    assert len(texts.choices) == 2


def test_n_samples_share_a_prompt_and_are_reproducible(client, model_id):
    kw = dict(model=model_id, prompt="the cat", max_tokens=12, temperature=1.0, seed=7, n=3)
    r = client.completions.create(**kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.text for c in r.choices}) > 1  # three different samples
    assert r.usage.prompt_tokens == 3  # bos + "the cat": counted once for the n samples
    again = client.completions.create(**kw)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]


def test_logprobs_are_the_models_distribution(client, model_id, reference, tok):
    r = client.completions.create(model=model_id, prompt="the cat", max_tokens=6, temperature=0,
                                  logprobs=3)  # fmt: skip
    lp = r.choices[0].logprobs
    gen = greedy(reference, [tok.bos_id, *tok.encode("the cat")], 6, tok)
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs) == 6
    want = forward_logprobs(reference, [tok.bos_id, *tok.encode("the cat"), *gen.tokens])[-6:]
    assert lp.token_logprobs == pytest.approx(want, abs=1e-4)
    for got, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 1 <= len(top) <= 3 and max(top.values()) == pytest.approx(got, abs=1e-6)  # greedy
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_echo_gives_prompt_logprobs_as_lm_eval_reads_them(server, model_id, reference, tok):
    """local-completions' loglikelihood request: token prompts, echo, max_tokens 1, logprobs 1."""
    ctx, cont = tok.encode("the cat sat on"), tok.encode(" a mat")
    body = {"model": model_id, "prompt": [ctx + cont, ctx], "temperature": 0, "max_tokens": 1,
            "logprobs": 1, "seed": 1234, "echo": True}  # fmt: skip
    out = httpx.post(server.url + "/v1/completions", json=body, timeout=30).json()
    choice = sorted(out["choices"], key=lambda c: c["index"])[0]
    lps = choice["logprobs"]["token_logprobs"]
    assert len(lps) == len(ctx + cont) + 1 and lps[0] is None
    ll = sum(lps[len(ctx) : -1])  # what lm-eval's parse_logprobs sums
    assert ll == pytest.approx(
        sum(forward_logprobs(reference, ctx + cont)[len(ctx) - 1 :]), abs=1e-4
    )
    tops = choice["logprobs"]["top_logprobs"][len(ctx) : -1]
    greedy_flags = [t == max(top.values()) for t, top in zip(lps[len(ctx) : -1], tops, strict=True)]
    assert all(isinstance(f, bool) for f in greedy_flags)
    assert choice["text"].startswith(tok.decode(ctx + cont))


def test_echo_of_a_text_prompt_shows_the_prompt(client, model_id):
    r = client.completions.create(model=model_id, prompt="the red ball", max_tokens=0, echo=True)
    assert r.choices[0].text == "the red ball"
    assert r.usage.completion_tokens == 0


def test_stop_strings_are_cut_from_the_text(client, model_id):
    kw = dict(model=model_id, prompt="the dog", max_tokens=24, temperature=0)
    full = client.completions.create(**kw).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert len(stop) == 3, full
    r = client.completions.create(**kw, stop=[stop, "never-there"])
    assert r.choices[0].text == full[: full.find(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_max_tokens_is_capped_by_the_context(client, model_id, tok):
    ids = (tok.encode("the cat sat on a mat ") * 40)[: CONTEXT - 3]
    r = client.completions.create(model=model_id, prompt=ids, max_tokens=100, temperature=0)
    assert r.usage.completion_tokens <= 3
    assert r.choices[0].finish_reason in ("length", "stop")


def test_kv_budget_is_applied_and_reported(client, model_id, tok):
    ids = (tok.encode("the cat sat on a mat and the dog ran ") * 10)[:60]
    kw = dict(model=model_id, prompt=ids, max_tokens=4, temperature=0)
    full = client.completions.create(**kw).choices[0].model_extra
    assert full["kv_policy"] == "full" and full["prompt_tokens"] == 60
    assert full["kv_retained"] == [60, 60]  # per layer
    for extra in ({"kv_policy": "snapkv", "kv_budget": 0.25},
                  {"extra_body": {"kv_policy": "streamingllm", "kv_budget": 0.25, "kv_sinks": 2}}):  # fmt: skip
        kv = client.completions.create(**kw, extra_body=extra).choices[0].model_extra
        assert kv["kv_budget"] == 0.25 and kv["prompt_tokens"] == 60
        assert kv["kv_retained"] == [math.ceil(0.25 * 60)] * 2, kv


def test_tokenizer_routes_match_the_completion_prompt(server, tok):
    info = httpx.get(server.url + "/tokenizer_info").json()
    assert info["eos_token"] == "<|eot|>"
    t = httpx.post(server.url + "/tokenize", json={"prompt": "the cat<|eot|>"}).json()["tokens"]
    assert t == [tok.bos_id, *tok.encode("the cat"), tok.eot_id]
    plain = {"prompt": "the cat", "add_special_tokens": False}
    assert httpx.post(server.url + "/tokenize", json=plain).json()["tokens"] == tok.encode(
        "the cat"
    )
    back = httpx.post(server.url + "/detokenize", json={"tokens": tok.encode("a red ball")}).json()
    assert back["prompt"] == "a red ball"
