"""The request-level engine: mixed batches, groups, log-probs, streaming, the step-level API."""

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.model import Engine, GenerationConfig
from lmlab.model.engine import Request
from lmlab.model.kv import KVCache
from lmlab.text.stream import IncrementalDecoder
from tests.model.tiny import V, prompts, tiny_model


class Chars:
    """A tokenizer stand-in: token i is one letter."""

    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(tiny_model(), tokenizer=Chars())


def mixed_requests():
    p = prompts(5, 23, 11, 17, 8, seed=2)
    return [
        Request(p[0], GenerationConfig(max_new_tokens=12)),
        Request(p[1], GenerationConfig(max_new_tokens=7, kv_policy="snapkv", kv_budget=0.5, kv_window=4)),
        Request(p[2], GenerationConfig(max_new_tokens=15, temperature=0.9, top_k=5, seed=3)),
        Request(p[3], GenerationConfig(max_new_tokens=9, kv_policy="h2o", kv_budget=0.3, banned_tokens=[1, 2, 3])),
        Request(p[4], GenerationConfig(max_new_tokens=11, temperature=1.3, top_p=0.8, seed=9, kv_policy="random", kv_budget=0.6)),
    ]  # fmt: skip


def outputs(results):
    return [[(g.tokens, g.finish_reason, g.kv_retained) for g in r.samples] for r in results]


def test_mixed_batch_equals_each_request_alone(engine):
    reqs = mixed_requests()
    together = engine.run(reqs)
    alone = [engine.run([r])[0] for r in reqs]
    assert outputs(together) == outputs(alone)
    assert [len(r.samples[0].tokens) for r in together][:2] == [12, 7]
    assert all(t not in (1, 2, 3) for t in together[3].samples[0].tokens)
    assert together[1].samples[0].kv_retained == [12, 12]  # ceil(0.5 * 23) per layer


def test_an_invalid_request_fails_alone(engine):
    reqs = mixed_requests()
    bad = Request(prompts(5)[0], GenerationConfig(kv_budget=1.5))
    too_long = Request([1] * 90, GenerationConfig(max_new_tokens=20))
    results = engine.run([reqs[0], bad, reqs[1], too_long])
    assert "1.5" in results[1].error and results[1].samples == []
    assert "exceeds the context of 96 by 14" in results[3].error
    assert outputs([results[0], results[2]]) == outputs(engine.run([reqs[0], reqs[1]]))


def test_group_of_samples_shares_one_prefill(engine, monkeypatch):
    model = engine.model
    calls = []
    forward = type(model).forward

    def counting(self, ids, *a, **k):
        calls.append(ids.shape[1])
        return forward(self, ids, *a, **k)

    monkeypatch.setattr(type(model), "forward", counting)
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.0, num_samples=6, seed=4)
    (result,) = engine.run([Request(prompts(13)[0], cfg)])
    assert sum(1 for t in calls if t > 1) == 1  # one prefill of 13 tokens for 6 samples
    assert [g.sample_index for g in result.samples] == list(range(6))
    assert len({tuple(g.tokens) for g in result.samples}) > 1  # independent samples
    again = engine.run([Request(prompts(13)[0], cfg)])[0]
    assert [g.tokens for g in again.samples] == [g.tokens for g in result.samples]
    greedy = engine.run(
        [Request(prompts(13)[0], GenerationConfig(max_new_tokens=6, num_samples=3))]
    )
    assert len({tuple(g.tokens) for g in greedy[0].samples}) == 1


def test_logprobs_equal_a_forward_pass(engine):
    prompt = prompts(9, seed=6)[0]
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0, seed=1, logprobs=3, prompt_logprobs=2)
    (result,) = engine.run([Request(prompt, cfg)])
    gen = result.samples[0]
    full = torch.tensor([prompt + gen.tokens])
    with torch.no_grad():
        ref = engine.model(full).log_softmax(-1)[0]
    n = len(prompt)
    want = [ref[n - 1 + i, t].item() for i, t in enumerate(gen.tokens)]
    assert gen.logprobs == pytest.approx(want, abs=1e-4)
    for i, top in enumerate(gen.top_logprobs):
        vals, ids = ref[n - 1 + i].topk(3)
        assert [t for t, _ in top] == ids.tolist()
        assert [v for _, v in top] == pytest.approx(vals.tolist(), abs=1e-4)
    assert result.prompt_logprobs[0] is None
    want_prompt = [ref[i - 1, prompt[i]].item() for i in range(1, n)]
    assert result.prompt_logprobs[1:] == pytest.approx(want_prompt, abs=1e-4)
    assert len(result.prompt_top_logprobs[3]) == 2
    streamed = [e for e in engine.stream([Request(prompt, cfg)]) if e.token is not None]
    assert [e.logprob for e in streamed] == gen.logprobs
    assert [e.top_logprobs for e in streamed] == gen.top_logprobs


def test_prompt_logprobs_only_request_and_padding(engine):
    """max_new_tokens=0 with prompt log-probs (a log-likelihood request), left-padded in a batch."""
    short, long = prompts(4, 20, seed=8)
    cfg = GenerationConfig(max_new_tokens=0, prompt_logprobs=0)
    together = engine.run([Request(short, cfg), Request(long, cfg)])
    alone = [engine.run([Request(p, cfg)])[0] for p in (short, long)]
    for a, b in zip(together, alone, strict=True):
        assert a.samples[0].tokens == [] and a.samples[0].finish_reason == "length"
        assert a.prompt_logprobs[1:] == pytest.approx(b.prompt_logprobs[1:], abs=1e-5)


def test_stream_many_rows_with_text(engine):
    reqs = mixed_requests()
    events = list(engine.stream(reqs))
    results = engine.run(reqs)
    for i, res in enumerate(results):
        mine = [e for e in events if e.index == i]
        assert [e.token for e in mine if e.token is not None] == res.samples[0].tokens
        assert "".join(e.text for e in mine) == res.samples[0].text
        assert mine[-1].done is not None and sum(e.done is not None for e in mine) == 1
    # rows interleave: the first events of later requests come before the last of earlier ones
    first_of_last = min(k for k, e in enumerate(events) if e.index == 4)
    last_of_first = max(k for k, e in enumerate(events) if e.index == 0)
    assert first_of_last < last_of_first


def test_incremental_text_never_splits_a_character():
    class Bytes:
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    text = "héllo 😀 wörld — ok"
    dec = IncrementalDecoder(Bytes())
    pieces = [dec.push(b) for b in text.encode("utf-8")]
    pieces.append(dec.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert pieces[text.encode().index("😀".encode()) + 1] == ""  # held back mid-character


def test_stop_strings_cut_the_text(engine):
    prompt = prompts(7, seed=11)[0]
    (free,) = engine.generate([prompt], GenerationConfig(max_new_tokens=20))
    stop = free.text[6:9]
    first = free.text.index(stop)
    cfg = GenerationConfig(max_new_tokens=20, stop_strings=[stop, "zzzzzzzz"])
    (res,) = engine.run([Request(prompt, cfg)])
    gen = res.samples[0]
    assert gen.finish_reason == "stop" and gen.stop_string == stop
    assert gen.text == free.text[:first]
    streamed = "".join(e.text for e in engine.stream([Request(prompt, cfg)]))
    assert streamed == free.text[:first]  # a stream never shows the stop string


def test_requests_joining_a_running_batch_match_alone(engine):
    reqs = mixed_requests()
    batch = engine.batch()
    handles = [batch.add(reqs[0]), batch.add(reqs[1])]
    for _ in range(3):
        batch.step()
    handles.append(batch.add(reqs[2]))
    batch.step()
    handles += [batch.add(reqs[3]), batch.add(reqs[4])]
    while batch.has_work:
        batch.step()
    assert outputs([h.result for h in handles]) == outputs([engine.run([r])[0] for r in reqs])


def test_cancel_and_max_rows(engine):
    reqs = mixed_requests()
    batch = engine.batch(max_rows=2)
    handles = [batch.add(r) for r in reqs]
    batch.step()
    assert batch.running_rows == 2 and len(batch.pending) == 3
    batch.cancel(handles[0])
    batch.step()
    assert handles[0].done and handles[0].result.samples[0].finish_reason == "cancelled"
    while batch.has_work:
        assert batch.running_rows <= 2
        batch.step()
    assert outputs([h.result for h in handles[1:]]) == outputs(
        [engine.run([r])[0] for r in reqs[1:]]
    )


def test_a_batch_that_never_empties_stays_small(engine):
    batch = engine.batch()
    sizes = []
    for k in range(12):  # a new request every 3 steps; each lives 8 steps
        batch.add(Request(prompts(10, seed=k)[0], GenerationConfig(max_new_tokens=8)))
        for _ in range(3):
            batch.step()
            sizes.append(batch.cache.pos if batch.cache is not None else 0)
    assert max(sizes) <= 10 + 8 + 8  # bounded by what live rows hold, not by the batch's age


def test_concat_right_aligns_rows():
    model = tiny_model()
    a, b = KVCache(1, 2, 12), KVCache(2, 2, 8, left_pad=[0, 2])
    with torch.no_grad():
        model(torch.tensor(prompts(6)), kv_cache=a)
        model(torch.tensor(prompts(4, 4)), kv_cache=b)
    merged = KVCache.concat([a, b], room=3)
    assert merged.pos == 6 and merged.capacity == 9 and merged.seen == [6, 4, 2]
    assert merged.retained_lengths() == [[6, 6], [4, 4], [2, 2]]
    assert torch.equal(merged.k[:, 1, :, 2:6], b.k[:, 0, :, :4])


def test_engine_unwraps_a_wrapped_model():
    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = tiny_model()
    assert Engine(Wrapper(model)).model is model


def test_vocab_check_uses_each_request(engine):
    (res,) = engine.run([Request([1, V], GenerationConfig())])
    assert "outside the vocabulary" in res.error


def test_kv_suffix_feeds_the_question_through_the_compressed_cache(engine):
    prompt = prompts(30, seed=12)[0]
    plain = GenerationConfig(max_new_tokens=6, logprobs=0, prompt_logprobs=0)
    split = GenerationConfig(max_new_tokens=6, logprobs=0, prompt_logprobs=0, kv_suffix=3)
    a, b = engine.run([Request(prompt, plain), Request(prompt, split)])
    # with the full cache, prefilling the last 3 tokens apart changes nothing
    assert a.samples[0].tokens == b.samples[0].tokens
    assert b.samples[0].logprobs == pytest.approx(a.samples[0].logprobs, abs=1e-4)
    assert b.prompt_logprobs[1:] == pytest.approx(a.prompt_logprobs[1:], abs=1e-4)
    # compressed: the first token is drawn from the compressed context (it is not, without a
    # suffix), and the suffix itself is kept whole: ceil(0.2 * 27) + 3 slots
    comp = dict(kv_policy="streamingllm", kv_budget=0.2, logprobs=0, max_new_tokens=6)
    c, d = engine.run([
        Request(prompt, GenerationConfig(**comp)),
        Request(prompt, GenerationConfig(**comp, kv_suffix=3)),
    ])  # fmt: skip
    assert c.samples[0].logprobs[0] == pytest.approx(a.samples[0].logprobs[0], abs=1e-5)
    assert abs(d.samples[0].logprobs[0] - a.samples[0].logprobs[0]) > 1e-3
    assert d.samples[0].kv_retained == [6 + 3, 6 + 3]
    # batch invariance with a mix of suffixes
    reqs = [Request(prompt, GenerationConfig(**comp, kv_suffix=k)) for k in (0, 3, 1)]
    assert outputs(engine.run(reqs)) == outputs([engine.run([r])[0] for r in reqs])
    (bad,) = engine.run([Request(prompt, GenerationConfig(kv_suffix=30))])
    assert "kv_suffix must be in [0, 30)" in bad.error


def test_limits_are_inclusive_where_openai_and_the_context_say_so(engine):
    """The exact edges: prompt + new tokens == context runs, one more does not; top_p 1 and
    logprobs 20 are allowed, 1.0001 and 21 are not; the last vocabulary id is a valid token."""
    edge = [Request([1] * 86, GenerationConfig(max_new_tokens=10))]
    assert engine.run(edge)[0].ok and len(engine.run(edge)[0].samples[0].tokens) == 10
    over = engine.run([Request([1] * 87, GenerationConfig(max_new_tokens=10))])[0]
    assert "by 1" in over.error
    ok = GenerationConfig(max_new_tokens=2, top_p=1.0, logprobs=20, stop_tokens=[V - 1])
    assert engine.run([Request([V - 1, 3], ok)])[0].ok
    for bad, words in (
        (GenerationConfig(top_p=1.0001), "top_p"),
        (GenerationConfig(logprobs=21), "logprobs must be between 0 and 20"),
        (GenerationConfig(stop_tokens=[V]), "outside the vocabulary"),
        (GenerationConfig(num_samples=0), "num_samples"),
    ):
        assert words in engine.run([Request([1, 2], bad)])[0].error


def test_events_name_their_sample_and_tag_and_run_keeps_order(engine):
    cfg = GenerationConfig(max_new_tokens=3, temperature=1.0, num_samples=3, seed=5)
    reqs = [Request(prompts(6)[0], cfg, tag="a"), Request(prompts(9)[0], cfg, tag="b")]
    events = list(engine.stream(reqs, max_rows=2))
    for i, tag in enumerate("ab"):
        mine = [e for e in events if e.index == i]
        assert {e.tag for e in mine} == {tag} and {e.sample for e in mine} == {0, 1, 2}
        done = sorted((e.sample, e.done.sample_index) for e in mine if e.done is not None)
        assert done == [(0, 0), (1, 1), (2, 2)]
    results = engine.run(reqs, max_rows=2)
    assert [r.request.tag for r in results] == ["a", "b"]
    assert [[g.tokens for g in r.samples] for r in results] == [
        [g.tokens for g in r.samples] for r in engine.run(reqs)
    ]
    with pytest.raises(LmlabError, match=r"^request 1: prompt is empty$"):
        engine.stream([reqs[0], Request([], cfg)])
    with pytest.raises(LmlabError, match=r"^prompt is empty$"):
        engine.stream([Request([], cfg)])


def test_a_stop_string_found_across_tokens_is_cut_where_it_starts(engine):
    prompt = prompts(7, seed=11)[0]
    (free,) = engine.generate([prompt], GenerationConfig(max_new_tokens=20))
    for start in (0, 5, 12):  # stop strings spanning several one-letter tokens, at any offset
        stop = free.text[start : start + 4]
        (res,) = engine.run(
            [Request(prompt, GenerationConfig(max_new_tokens=20, stop_strings=[stop]))]
        )
        assert res.samples[0].text == free.text[: free.text.index(stop)]


def test_request_errors_say_exactly_what_is_wrong(engine):
    def error(**cfg):
        return engine.run([Request([1, 2], GenerationConfig(**cfg))])[0].error

    assert error(prompt_logprobs=21) == "prompt_logprobs must be between 0 and 20, got 21"
    assert error(stop_tokens=[V]) == f"stop token ids [{V}] are outside the vocabulary of {V}"
    assert error(banned_tokens=[-1]) == f"banned token ids [-1] are outside the vocabulary of {V}"
    assert error(banned_tokens=list(range(V))) == "every token of the vocabulary is banned"
    assert error(stop_strings=[""]) == "stop strings must be non-empty strings"
    assert error(stop_strings=[5]) == "stop strings must be non-empty strings"
    plain = Engine(engine.model)  # no tokenizer
    (res,) = plain.run([Request([1, 2], GenerationConfig(stop_strings=["x"]))])
    assert res.error == "stop strings need an engine with a tokenizer"
    with pytest.raises(LmlabError, match=r"^no prompts to generate from$"):
        engine.generate([])
    with pytest.raises(LmlabError, match=r"^prompt is empty$"):
        engine.generate([[]])
    # a bare list of ids is a request with the default settings
    (bare,) = engine.run([[1, 2, 3]])
    assert bare.samples[0].tokens == engine.run([Request([1, 2, 3])])[0].samples[0].tokens
