"""Continuous batching: invariance, load, back-pressure, time-outs, disconnects, metrics."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serve.conftest import build_run, serve

WORDS = "the cat sat on a mat and the dog ran to the red ball while birds sang".split()


def prompt_text(i: int) -> str:
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(2 + (i * 5) % 13))


def complete(url: str, body: dict, timeout: float = 60) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json=body, timeout=timeout)


def metric(server, name: str, **labels) -> float:
    text = httpx.get(server.url + "/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}" + (rf"\{{{re.escape(want)}\}}" if labels else "") + r" (\S+)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


def test_concurrent_greedy_requests_equal_each_alone(server, model_id):
    bodies = [{"model": model_id, "prompt": prompt_text(i), "max_tokens": 4 + i % 9,
               "temperature": 0, "logprobs": 1 if i % 3 == 0 else None}
              for i in range(16)]  # fmt: skip
    alone = [complete(server.url, b).json() for b in bodies]
    with ThreadPoolExecutor(16) as pool:
        together = [r.json() for r in pool.map(lambda b: complete(server.url, b), bodies)]
    for a, t in zip(alone, together, strict=True):
        assert t["choices"][0]["text"] == a["choices"][0]["text"]
        assert t["usage"] == a["usage"]
        if a["choices"][0]["logprobs"]:
            got = t["choices"][0]["logprobs"]["token_logprobs"]
            assert got == pytest.approx(a["choices"][0]["logprobs"]["token_logprobs"], abs=1e-4)


def test_load_of_64_clients_loses_nothing(server, model_id):
    """64 concurrent clients (asyncio, so the clients do not starve the in-process server of the
    GIL), 2 requests each, mixing chat, streams, n, KV budgets and failing requests."""
    before = metric(server, "lmlab_requests_total", endpoint="/v1/completions", status="200")
    before_chat = metric(
        server, "lmlab_requests_total", endpoint="/v1/chat/completions", status="200"
    )
    url = server.url

    async def one(http: httpx.AsyncClient, i: int, k: int) -> bool:
        extra = {"kv_policy": "snapkv", "kv_budget": 0.5} if (i + k) % 3 == 0 else {}
        if (i + k) % 4 == 0:
            body = {"model": model_id, "max_tokens": 6, "temperature": 0.7, "seed": i,
                    "messages": [{"role": "user", "content": prompt_text(i)}], **extra}  # fmt: skip
            r = await http.post(url + "/v1/chat/completions", json=body)
            return r.status_code == 200 and r.json()["choices"][0]["finish_reason"] is not None
        if (i + k) % 4 == 1:
            body = {"model": model_id, "prompt": prompt_text(i), "max_tokens": 6, "stream": True,
                    **extra}  # fmt: skip
            async with http.stream("POST", url + "/v1/completions", json=body) as r:
                lines = [line async for line in r.aiter_lines()]
            return r.status_code == 200 and "data: [DONE]" in lines
        body = {"model": model_id, "prompt": prompt_text(i), "max_tokens": 6, "n": 1 + i % 2,
                **extra}  # fmt: skip
        r = await http.post(url + "/v1/completions", json=body)
        return r.status_code == 200 and len(r.json()["choices"]) == 1 + i % 2

    async def client_run(http: httpx.AsyncClient, i: int) -> list[bool]:
        if i % 8 == 0:  # failing requests in the mix must not disturb the others
            bad = {"prompt": prompt_text(i), "kv_budget": 2.0} if i % 16 else {"prompt": [7] * 999}
            assert (await http.post(url + "/v1/completions", json=bad)).status_code == 400
        return [await one(http, i, k) for k in range(2)]

    async def main() -> list[bool]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            runs = await asyncio.gather(*(client_run(http, i) for i in range(64)))
        return [ok for run in runs for ok in run]

    t0 = time.monotonic()
    results = asyncio.run(main())
    assert time.monotonic() - t0 < 30
    assert results == [True] * 128
    after = metric(server, "lmlab_requests_total", endpoint="/v1/completions", status="200")
    after_chat = metric(
        server, "lmlab_requests_total", endpoint="/v1/chat/completions", status="200"
    )
    assert (after - before) + (after_chat - before_chat) == 128
    assert metric(server, "lmlab_queue_depth") == 0 and metric(server, "lmlab_running_rows") == 0


def test_metrics_report_tokens_and_latency_histograms(server, client, model_id):
    client.completions.create(model=model_id, prompt="the cat", max_tokens=5, temperature=0)
    text = httpx.get(server.url + "/metrics").text
    for name in ("lmlab_prompt_tokens_total", "lmlab_completion_tokens_total", "lmlab_queue_depth",
                 "lmlab_running_rows", "lmlab_time_to_first_token_seconds_bucket",
                 "lmlab_time_per_output_token_seconds_bucket"):  # fmt: skip
        assert name in text
    assert metric(server, "lmlab_completion_tokens_total") >= 5
    assert metric(server, "lmlab_time_to_first_token_seconds_count") >= 1


@pytest.fixture(scope="module")
def slow_run(tmp_path_factory):
    """The same tiny model with a long context: a 2000-token answer takes seconds."""
    return build_run(tmp_path_factory.mktemp("slow"), "slow-serve", context=2048)


def long_stream(url: str, model_id: str, **kw):
    body = {"model": model_id, "prompt": "the cat", "max_tokens": 2000, "stream": True,
            "temperature": 1.0, "seed": 1, "ignore_eos": True, **kw}  # fmt: skip
    return httpx.stream("POST", url + "/v1/completions", json=body, timeout=60)


def wait_for(cond, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_a_client_that_hangs_up_leaves_the_batch(slow_run):
    s = serve(slow_run, max_batch=4)
    try:
        with long_stream(s.url, "slow-serve") as r:
            lines = r.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)
            assert wait_for(lambda: metric(s, "lmlab_running_rows") == 1)
        assert wait_for(lambda: metric(s, "lmlab_cancelled_requests_total", reason="client") == 1)
        assert wait_for(lambda: metric(s, "lmlab_running_rows") == 0)
        assert complete(s.url, {"prompt": "the", "max_tokens": 2}).status_code == 200
    finally:
        s.close()


def test_a_full_queue_answers_429_with_retry_after(slow_run):
    s = serve(slow_run, max_batch=1, max_queue=2)
    try:
        with long_stream(s.url, "slow-serve") as r:
            lines = r.iter_lines()
            next(lines)  # the one row is busy
            outs: list[list[int]] = []
            threads = []
            for _ in range(2):
                out: list[int] = []
                outs.append(out)
                t = threading.Thread(
                    target=lambda o=out: o.append(
                        complete(s.url, {"prompt": "the dog", "max_tokens": 3}).status_code
                    )
                )
                t.start()
                threads.append(t)
            assert wait_for(lambda: httpx.get(s.url + "/health").json()["queue_depth"] == 2)
            refused = complete(s.url, {"prompt": "a mat", "max_tokens": 3})
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["type"] == "rate_limit_error"
        for t in threads:  # the long stream is gone: the waiting two are served
            t.join(timeout=30)
        assert outs == [[200], [200]]
    finally:
        s.close()


def test_a_request_past_its_timeout_is_dropped_with_504(slow_run):
    s = serve(slow_run, request_timeout=0.3)
    try:
        r = complete(s.url, {"prompt": "the cat", "max_tokens": 2000, "ignore_eos": True})
        assert r.status_code == 504 and "timed out" in r.json()["error"]["message"]
        assert wait_for(lambda: metric(s, "lmlab_running_rows") == 0)
        assert complete(s.url, {"prompt": "the", "max_tokens": 2}).status_code == 200
    finally:
        s.close()
