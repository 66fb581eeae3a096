"""Every error a client can cause: OpenAI's shape, the right status, one line, no traceback."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.serve.conftest import CONTEXT, serve


def post(server, path: str, body=None, content: bytes | None = None, headers=None):
    return httpx.post(server.url + path, json=body, content=content, headers=headers, timeout=30)


def assert_error(r: httpx.Response, status: int, *words: str, param: str | None = None) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    msg = err["message"]
    assert "Traceback" not in msg and "\n" not in msg
    for w in words:
        assert w in msg, msg
    if param is not None:
        assert err["param"] == param
    return msg


def test_prompt_over_the_context_says_by_how_much(server):
    ids = [5] * (CONTEXT + 3)
    r = post(server, "/v1/completions", {"prompt": ids, "max_tokens": 4})
    msg = assert_error(r, 400, f"{CONTEXT + 3} tokens", f"({4} too many)", param="prompt")
    assert r.json()["error"]["code"] == "context_length_exceeded", msg


def test_chat_over_the_context_says_by_how_much(server):
    long = "the cat sat on a mat " * 200
    r = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": long}]})
    assert_error(r, 400, "too many", param="messages")


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"kv_policy": "nope"}, ["unknown KV policy", "snapkv"]),
        ({"kv_budget": 0}, ["kv_budget", "(0, 1]"]),
        ({"kv_budget": 1.5}, ["kv_budget", "(0, 1]"]),
        ({"temperature": -1}, ["temperature"]),
        ({"temperature": 3}, ["temperature"]),
        ({"top_p": 0}, ["top_p"]),
        ({"n": 0}, ["n"]),
        ({"max_tokens": -1}, ["max_tokens"]),
        ({"logprobs": 99}, ["logprobs"]),
        ({"stop": ["a", "b", "c", "d", "e"]}, ["at most 4 stop strings"]),
        ({"frequency_penalty": 0.5}, ["not supported"]),
        ({"kv_budgt": 0.5}, ["kv_budgt", "unknown field"]),
        ({"extra_body": {"kv_policy": "nope"}}, ["unknown KV policy"]),
        ({"extra_body": {"colour": 1}}, ["unknown extension field 'colour'"]),
        ({"prompt": [[1, 2], "text"]}, ["prompt"]),
        ({"prompt": [10**6]}, ["outside the vocabulary"]),
    ],
)
def test_bad_fields_answer_400_naming_the_field(server, extra, words):
    r = post(server, "/v1/completions", {"prompt": "the cat", "max_tokens": 2, **extra})
    assert_error(r, 400, *words)


def test_bad_chat_fields_answer_400(server):
    ok = [{"role": "user", "content": "hi"}]
    for body, word in [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ({"messages": ok, "top_logprobs": 2}, "top_logprobs needs logprobs"),
        ({"messages": ok, "max_completion_tokens": 0}, "max_completion_tokens"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "end with a user message"),
    ]:
        assert_error(post(server, "/v1/chat/completions", body), 400, word)


def test_malformed_json_and_non_objects_answer_400(server):
    assert_error(post(server, "/v1/completions", content=b"{not json"), 400, "not valid JSON")
    assert_error(post(server, "/v1/completions", [1, 2]), 400, "JSON object")
    assert_error(post(server, "/v1/completions", {}), 400, "prompt")


def test_unknown_model_is_404_and_never_a_path(server, client):
    r = post(server, "/v1/completions", {"model": "/etc/passwd", "prompt": "x"})
    assert_error(r, 404, "not served here", param="model")
    assert r.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x")
    assert httpx.get(server.url + "/v1/models/other").status_code == 404


def test_unknown_route_is_404_in_openai_shape(server):
    assert_error(httpx.get(server.url + "/v1/nothing"), 404)


def test_openai_client_raises_bad_request(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=server.app.state.serve.model_id, prompt="x",
                                  extra_body={"kv_budget": 2.0})  # fmt: skip
    assert "kv_budget" in str(e.value)


@pytest.fixture(scope="module")
def guarded(tiny_run):
    s = serve(tiny_run, api_key="s3cret-key", max_body_bytes=2048)
    yield s
    s.close()


def test_api_key_required_when_set(guarded):
    body = {"prompt": "the cat", "max_tokens": 1}
    assert_error(post(guarded, "/v1/completions", body), 401, "API key")
    bad = {"Authorization": "Bearer wrong"}
    assert_error(post(guarded, "/v1/completions", body, headers=bad), 401)
    assert_error(httpx.get(guarded.url + "/v1/models", headers=bad), 401)
    assert httpx.get(guarded.url + "/health").status_code == 200  # liveness stays open
    good = {"Authorization": "Bearer s3cret-key"}
    assert httpx.get(guarded.url + "/v1/models", headers=good).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        guarded.client(api_key="wrong").models.list()
    assert guarded.client(api_key="s3cret-key").models.list().data[0].id == "tiny-serve"


def test_body_over_the_limit_is_413(guarded):
    good = {"Authorization": "Bearer s3cret-key"}
    big = {"prompt": "the cat " * 1000, "max_tokens": 1}
    assert_error(post(guarded, "/v1/completions", big, headers=good), 413, "2048 bytes")

    def chunks():  # no Content-Length: the limit still holds
        yield b'{"prompt": "'
        for _ in range(100):
            yield b"the cat " * 10
        yield b'"}'

    r = httpx.post(guarded.url + "/v1/completions", content=chunks(),
                   headers={**good, "Content-Type": "application/json"})  # fmt: skip
    assert_error(r, 413)
