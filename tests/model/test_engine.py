import pytest

from lmlab.errors import LmlabError
from lmlab.model import Engine, GenerationConfig
from lmlab.model.engine import Request
from tests.model.tiny import V, prompts, tiny_model


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(tiny_model())


@pytest.mark.parametrize("policy, budget", [("full", 1.0), ("snapkv", 0.5), ("h2o", 0.3)])
def test_batched_equals_unbatched_greedy(engine, policy, budget):
    batch = prompts(5, 23, 11)
    cfg = GenerationConfig(max_new_tokens=16, kv_policy=policy, kv_budget=budget, kv_window=4)
    together = engine.generate(batch, cfg)
    alone = [engine.generate([p], cfg)[0] for p in batch]
    assert [g.tokens for g in together] == [g.tokens for g in alone]
    assert [g.kv_retained for g in together] == [g.kv_retained for g in alone]
    assert [g.prompt_tokens for g in together] == [5, 23, 11]


@pytest.mark.parametrize("policy, budget", [("full", 1.0), ("snapkv", 0.5)])
def test_short_conv_model_batched_equals_unbatched_with_rows_finishing(policy, budget):
    engine = Engine(tiny_model(short_conv=4))
    batch = prompts(5, 23, 11, 2)
    free = engine.generate(batch, GenerationConfig(max_new_tokens=12))
    stop = free[0].tokens[4]  # row 0 ends early, so the batch drops rows (and their conv state)
    cfg = GenerationConfig(
        max_new_tokens=12, stop_tokens=(stop,), kv_policy=policy, kv_budget=budget, kv_window=4
    )
    together = engine.generate(batch, cfg)
    alone = [engine.generate([p], cfg)[0] for p in batch]
    assert [g.tokens for g in together] == [g.tokens for g in alone]
    assert together[0].finish_reason == "stop" and len(together[0].tokens) <= 4
    assert [g.kv_retained for g in together] == [g.kv_retained for g in alone]


def test_length_finish_and_timings(engine):
    (result,) = engine.generate(prompts(7), GenerationConfig(max_new_tokens=9))
    assert len(result.tokens) == 9 and result.finish_reason == "length"
    assert result.stop_token is None and result.text is None
    assert result.prefill_s > 0 and result.decode_s > 0 and result.decode_tokens_per_s > 0
    assert result.kv_retained == [7, 7]


def test_stop_tokens_end_rows_early_and_others_continue(engine):
    batch = prompts(6, 14)
    free = engine.generate(batch, GenerationConfig(max_new_tokens=12))
    stop = free[0].tokens[3]
    first = free[0].tokens.index(stop)
    results = engine.generate(batch, GenerationConfig(max_new_tokens=12, stop_tokens=(stop,)))
    assert results[0].finish_reason == "stop" and results[0].stop_token == stop
    assert results[0].tokens == free[0].tokens[:first]
    expected_1 = free[1].tokens
    if stop in expected_1:
        expected_1 = expected_1[: expected_1.index(stop)]
    assert results[1].tokens == expected_1
    assert len(results[1].tokens) > len(results[0].tokens)  # row 1 outlived row 0


def test_banned_tokens_never_appear(engine):
    batch = prompts(8, 3)
    free = engine.generate(batch, GenerationConfig(max_new_tokens=10))
    banned = sorted({t for g in free for t in g.tokens})
    greedy = engine.generate(batch, GenerationConfig(max_new_tokens=10, banned_tokens=banned))
    sampled = engine.generate(
        batch,
        GenerationConfig(max_new_tokens=30, temperature=1.5, banned_tokens=list(range(0, V, 2))),
    )
    assert all(t not in banned for g in greedy for t in g.tokens)
    assert all(t % 2 == 1 for g in sampled for t in g.tokens)


def test_top_k_one_and_tiny_top_p_equal_greedy(engine):
    batch = prompts(9, 4)
    greedy = [g.tokens for g in engine.generate(batch, GenerationConfig(max_new_tokens=10))]
    top1 = engine.generate(batch, GenerationConfig(max_new_tokens=10, temperature=1.0, top_k=1))
    nucleus = engine.generate(
        batch, GenerationConfig(max_new_tokens=10, temperature=1.0, top_p=1e-6, seed=3)
    )
    assert [g.tokens for g in top1] == greedy
    assert [g.tokens for g in nucleus] == greedy


def test_sampling_is_seed_deterministic(engine):
    batch = prompts(5, 5, seed=1)
    batch[1] = batch[0]  # identical prompts still get different samples (one stream per row)

    def sample(seed):
        cfg = GenerationConfig(max_new_tokens=20, temperature=1.0, seed=seed)
        return [g.tokens for g in engine.generate(batch, cfg)]

    a, b, c = sample(7), sample(7), sample(8)
    assert a == b and a != c and a[0] != a[1]


def test_context_overflow_names_the_numbers(engine):
    with pytest.raises(LmlabError) as err:
        engine.generate(prompts(5, 60), GenerationConfig(max_new_tokens=40))
    assert str(err.value) == (
        "prompt 1: prompt of 60 tokens + 40 new tokens exceeds the context of 96 by 4"
    )


@pytest.mark.parametrize(
    "batch, cfg, words",
    [
        ([[1, 2], []], GenerationConfig(), "prompt 1: prompt is empty"),
        ([], GenerationConfig(), "no prompts"),
        ([[1, 99]], GenerationConfig(), "outside the vocabulary"),
        ([[1]], GenerationConfig(top_p=0.0), "top_p"),
        ([[1]], GenerationConfig(temperature=-1.0), "temperature"),
        ([[1]], GenerationConfig(banned_tokens=list(range(V))), "every token"),
    ],
)
def test_bad_requests_are_lmlab_errors(engine, batch, cfg, words):
    with pytest.raises(LmlabError, match=words):
        engine.generate(batch, cfg)


def test_stream_yields_the_same_tokens(engine):
    prompt = prompts(10, seed=5)[0]
    cfg = GenerationConfig(max_new_tokens=8, kv_policy="streamingllm", kv_budget=0.5)
    events = list(engine.stream([Request(prompt, cfg)]))
    streamed = [e.token for e in events if e.token is not None]
    (result,) = engine.run([Request(prompt, cfg)])
    assert streamed == result.samples[0].tokens
    assert events[-1].done is not None and events[-1].done.tokens == streamed
    assert all(e.done is None for e in events[:-1])
    assert events[-1].done.kv_retained == [5, 5]


def test_tokenizer_text_and_training_flag_restored():
    class Chars:
        def decode(self, ids):
            return "".join(chr(97 + i % 26) for i in ids)

    model = tiny_model().train()
    result = Engine(model, tokenizer=Chars()).generate(
        [[1, 2, 3]], GenerationConfig(max_new_tokens=4)
    )
    assert result[0].text == Chars().decode(result[0].tokens)
    assert model.training


def test_zero_new_tokens(engine):
    (result,) = engine.generate([[1, 2, 3]], GenerationConfig(max_new_tokens=0))
    assert result.tokens == [] and result.finish_reason == "length"


def test_stream_validates_before_iteration(engine):
    with pytest.raises(LmlabError, match="exceeds the context"):
        engine.stream([Request([1] * 90, GenerationConfig(max_new_tokens=10))])
