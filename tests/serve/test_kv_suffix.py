"""The `kv_suffix` extension field: the last N prompt tokens are prefilled after the policy
compressed the rest, and the server reports ceil(budget x (n - N)) + N positions kept per layer."""

from __future__ import annotations

import math

import openai
import pytest

from tests.serve.test_completions import greedy


def test_kv_suffix_reaches_the_engine_and_is_reported(client, model_id, reference, tok):
    ids = (tok.encode("the cat sat on a mat and the dog ran ") * 10)[:60]
    kw = dict(model=model_id, prompt=ids, max_tokens=4, temperature=0)
    for extra in ({"kv_policy": "streamingllm", "kv_budget": 0.25, "kv_suffix": 4},
                  {"extra_body": {"kv_policy": "snapkv", "kv_budget": 0.25, "kv_suffix": 4}}):  # fmt: skip
        choice = client.completions.create(**kw, extra_body=extra).choices[0]
        kv = choice.model_extra
        assert kv["prompt_tokens"] == 60
        assert kv["kv_retained"] == [math.ceil(0.25 * 56) + 4] * 2, kv  # not ceil(0.25 * 60)
    # the same tokens as the engine itself given the same settings
    got = client.completions.create(
        **kw, extra_body={"kv_policy": "streamingllm", "kv_budget": 0.25, "kv_suffix": 4}
    ).choices[0]
    want = greedy(reference, ids, 4, tok, kv_policy="streamingllm", kv_budget=0.25, kv_suffix=4)
    assert got.text == tok.decode(want.tokens)


@pytest.mark.parametrize("bad", [-1, 60])
def test_a_kv_suffix_outside_the_prompt_is_a_400(client, model_id, tok, bad):
    ids = (tok.encode("the cat sat on a mat ") * 10)[:60]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(
            model=model_id, prompt=ids, max_tokens=2, extra_body={"kv_suffix": bad}
        )
    assert "kv_suffix" in str(e.value)
