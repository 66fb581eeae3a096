"""Laws of the engine, checked on random prompt sets (hypothesis, small sizes): a batch
generates what each of its requests generates alone."""

from dataclasses import replace

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmlab.model import Engine, GenerationConfig
from lmlab.model.engine import Request
from lmlab.model.kv import KV_POLICIES, row_seed
from tests.model.tiny import V, tiny_model

ENGINE = Engine(tiny_model(seed=3))

PROMPTS = st.lists(st.lists(st.integers(0, V - 1), min_size=1, max_size=16), min_size=1, max_size=3)
CONFIGS = st.builds(
    GenerationConfig,
    max_new_tokens=st.integers(1, 4),
    temperature=st.sampled_from([0.0, 0.8]),
    top_k=st.sampled_from([0, 5]),
    top_p=st.sampled_from([1.0, 0.9]),
    seed=st.integers(0, 1000),
    kv_policy=st.sampled_from(KV_POLICIES),
    kv_budget=st.sampled_from([0.2, 0.5, 1.0]),
    kv_window=st.sampled_from([2, 8]),
    banned_tokens=st.sampled_from([(), (1, 2)]),
    stop_tokens=st.sampled_from([(), (5,)]),
)


def outcome(gens):
    return [(g.tokens, g.finish_reason, g.kv_retained, g.stop_token) for g in gens]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompts=PROMPTS, cfg=CONFIGS)
def test_a_batch_generates_what_each_prompt_generates_alone(prompts, cfg):
    batched = ENGINE.generate(prompts, cfg)
    alone = [
        ENGINE.run([Request(p, replace(cfg, seed=row_seed(cfg.seed, i)))])[0].samples[0]
        for i, p in enumerate(prompts)
    ]
    assert outcome(batched) == outcome(alone)
    for p, g in zip(prompts, batched, strict=True):
        assert g.prompt_tokens == len(p) and len(g.tokens) <= cfg.max_new_tokens
        assert not set(g.tokens) & set(cfg.banned_tokens) and not set(g.tokens) & set(
            cfg.stop_tokens
        )


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompts=PROMPTS, n_new=st.integers(1, 4))
def test_greedy_batches_ignore_the_company_they_keep(prompts, n_new):
    cfg = GenerationConfig(max_new_tokens=n_new)
    batched = ENGINE.generate(prompts, cfg)
    assert outcome(batched) == [outcome(ENGINE.generate([p], cfg))[0] for p in prompts]
    # and greedy decoding takes the argmax of a plain forward, token by token
    p, g = prompts[0], batched[0]
    ids = list(p)
    with torch.no_grad():
        for t in g.tokens:
            logits = ENGINE.model(torch.tensor([ids]))[0, -1]
            assert logits[t] >= logits.max() - 1e-4
            ids.append(t)
