"""/v1/chat/completions (the core template) and streaming of both endpoints."""

from __future__ import annotations

import httpx

from lmlab.model.engine import GenerationConfig
from lmlab.text.chat import render_for_completion, role_token_ids

MESSAGES = [
    {"role": "system", "content": "you are a cat"},
    {"role": "user", "content": "the dog ran to the red ball"},
]


def test_chat_equals_the_engine_on_the_core_template(client, model_id, reference, tok):
    r = client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=10,
                                       temperature=0)  # fmt: skip
    ids = render_for_completion(tok, MESSAGES)
    cfg = GenerationConfig(max_new_tokens=10, temperature=0.0, stop_tokens=(tok.eot_id,),
                           banned_tokens=tuple(role_token_ids(tok)))  # fmt: skip
    (gen,) = reference.generate([ids], cfg)
    (choice,) = r.choices
    assert choice.message.role == "assistant" and choice.message.content == gen.text
    assert choice.finish_reason == gen.finish_reason
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(gen.tokens)
    assert choice.model_extra["prompt_tokens"] == len(ids)


def test_chat_fields_max_completion_tokens_logprobs_parts(client, model_id):
    messages = [{"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "the cat"}]}]  # fmt: skip
    r = client.chat.completions.create(model=model_id, messages=messages, temperature=0,
                                       max_completion_tokens=5, logprobs=True, top_logprobs=2)  # fmt: skip
    (choice,) = r.choices
    assert r.usage.completion_tokens <= 5
    content = choice.logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 2 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob


def test_completion_stream_equals_the_full_answer_with_usage(client, model_id):
    kw = dict(model=model_id, prompt="the cat", max_tokens=16, temperature=0)
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    finals = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [f.finish_reason for f in finals] == [full.choices[0].finish_reason]
    assert finals[0].model_extra["prompt_tokens"] == full.usage.prompt_tokens
    assert (
        chunks[-1].choices == []
        and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    )
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_with_n_and_stop_strings_matches_the_full_answer(client, model_id):
    kw = dict(model=model_id, prompt="the dog", max_tokens=20, temperature=1.0, seed=3, n=2)
    full = client.completions.create(**kw)
    stop = full.choices[0].text[4:6]
    full = client.completions.create(**kw, stop=stop)
    texts = ["", ""]
    for c in client.completions.create(**kw, stop=stop, stream=True):
        for ch in c.choices:
            texts[ch.index] += ch.text
    assert texts == [c.text for c in full.choices]
    assert stop not in texts[0]


def test_chat_stream_opens_with_the_role_and_ends_with_usage(client, model_id):
    kw = dict(model=model_id, messages=MESSAGES, max_tokens=12, temperature=0)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True,
                                                 stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.total_tokens == full.usage.total_tokens
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_raw_sse_ends_with_done(server, model_id):
    body = {"model": model_id, "prompt": "a mat", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)
