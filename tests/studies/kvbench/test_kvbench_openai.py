"""The openai engine against real HTTP servers on 127.0.0.1: a stub that ignores budgets must fail
the run; one that honours them is verified; 429s are retried; max_rpm and concurrency hold; a
closed port is a clear error with nothing written."""

import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import db_counts

from lmlab.errors import LmlabError
from lmlab.studies.kvbench.config import GenerationOptions, OpenAIEngine, PolicyOptions
from lmlab.studies.kvbench.engines import Item
from lmlab.studies.kvbench.openai_engine import OpenAIBench
from lmlab.studies.kvbench.pipeline import Bench, load_config


class Stub:
    """A tiny OpenAI-compatible server. mode: 'ignore' (same answer whatever the budget),
    'honour' (the answer depends on the budget and it reports kv_retained), 'limit' (429 on
    every other request)."""

    def __init__(self, mode: str, delay: float = 0.0):
        self.mode, self.delay = mode, delay
        self.bodies: list[dict] = []
        self.in_flight = self.peak = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, obj, headers=None):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"data": [{"id": "stub"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.bodies.append(body)
                    n_seen = len(stub.bodies)
                    stub.in_flight += 1
                    stub.peak = max(stub.peak, stub.in_flight)
                try:
                    time.sleep(stub.delay)
                    if stub.mode == "limit" and n_seen % 2 == 1:
                        return self._send(429, {"error": "slow down"}, {"Retry-After": "0.01"})
                    self._send(200, stub.reply(body))
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reply(self, body: dict) -> dict:
        n = len(body["prompt"].split())
        budget = body.get("kv_budget", 1.0)
        text = " forest"
        out = {
            "choices": [{"text": text, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": n, "completion_tokens": 1},
        }
        if self.mode == "honour":
            if budget < 1.0:
                out["choices"][0]["text"] = " attic"
            kept = max(1, math.ceil(budget * n))
            out["kv_retained"] = [kept, kept]
        return out

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    servers = []

    def make(mode, delay=0.0):
        s = Stub(mode, delay)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def _bench(tiny, url, **over):
    path = tiny(
        **{
            "engine": {"kind": "openai", "base_url": url, "model": "stub", "concurrency": 2},
            **over,
        }
    )
    return Bench(load_config(path, None), source=str(path), echo=lambda s: None), path


def test_a_server_that_ignores_budgets_fails_the_run(tiny, stub):
    s = stub("ignore")
    bench, path = _bench(tiny, s.url)
    bench.stage("prepare")
    with pytest.raises(LmlabError, match=r"stage run: the budgets had no effect"):
        bench.stage("run")
    # the budget did go out in the body, the responses are stored, the stage is not done
    assert {b["kv_budget"] for b in s.bodies} == {1.0, 0.2}
    assert {b["kv_policy"] for b in s.bodies} == {"full", "snapkv"}
    counts = db_counts(bench.out / "kvbench.sqlite")
    assert counts["responses"] == len(s.bodies) == 12
    verified = bench.conn.execute("SELECT verified FROM runs WHERE budget < 1").fetchone()[0]
    assert verified.startswith("FAILED: budgets had no effect")
    with pytest.raises(LmlabError, match="run `run` first"):
        bench.stage("score")


def test_a_server_that_honours_budgets_is_verified(tiny, stub):
    s = stub("honour")
    bench, _ = _bench(tiny, s.url)
    assert bench.all() == ["done"] * 5
    rows = dict(bench.conn.execute("SELECT policy || '@' || budget, verified FROM runs"))
    assert rows["snapkv@0.2"].startswith("verified")
    assert "budgets verified" in (bench.out / "report.md").read_text().lower()


def test_a_server_that_reports_nothing_is_budget_unverified(tiny, stub, monkeypatch):
    s = stub("honour")
    monkeypatch.setattr(
        Stub, "reply", lambda self, body: {"choices": [{"text": str(body["kv_budget"])}]}
    )
    bench, _ = _bench(tiny, s.url)
    bench.stage("prepare")
    bench.stage("run")
    verified = bench.conn.execute("SELECT verified FROM runs WHERE budget < 1").fetchone()[0]
    assert verified.startswith("budget unverified")


def test_429_is_retried_with_backoff(stub):
    s = stub("limit")
    eng = OpenAIBench(OpenAIEngine(base_url=s.url, retries=2, backoff_s=0.01, concurrency=1))
    items = [Item(f"r{i}", f"e{i}", "a b c", 4) for i in range(3)]
    got = list(eng.run_cell(items, "snapkv", 0.5, PolicyOptions(), GenerationOptions()))
    assert all(r.error_type is None and r.text == " forest" for _, r in got)
    assert all(r.attempts == 2 for _, r in got)
    assert len(s.bodies) == 6

    s2 = stub("limit")
    eng = OpenAIBench(OpenAIEngine(base_url=s2.url, retries=0, concurrency=1))
    (_, r), *_ = eng.run_cell(items[:1], "snapkv", 0.5, PolicyOptions(), GenerationOptions())
    assert r.error_type == "RATE_LIMITED"


def test_max_rpm_and_concurrency_are_applied(stub):
    s = stub("honour", delay=0.15)
    eng = OpenAIBench(OpenAIEngine(base_url=s.url, concurrency=2))
    items = [Item(f"r{i}", f"e{i}", "a b c", 4) for i in range(6)]
    list(eng.run_cell(items, "full", 1.0, PolicyOptions(), GenerationOptions()))
    assert s.peak == 2

    s2 = stub("honour")
    eng = OpenAIBench(OpenAIEngine(base_url=s2.url, concurrency=4, max_rpm=600))  # 0.1 s apart
    t0 = time.perf_counter()
    list(eng.run_cell(items[:4], "full", 1.0, PolicyOptions(), GenerationOptions()))
    assert time.perf_counter() - t0 >= 0.3 - 0.02


def test_an_unreachable_endpoint_is_a_clear_error_with_nothing_written(tiny, stub):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bench, path = _bench(tiny, f"http://127.0.0.1:{port}/v1", **{"engine.timeout_s": 2})
    bench.stage("prepare")
    before = db_counts(bench.out / "kvbench.sqlite")
    with pytest.raises(LmlabError, match=rf"{path}: stage run: cannot reach the endpoint"):
        bench.stage("run")
    after = db_counts(bench.out / "kvbench.sqlite")
    assert after == before and after["runs"] == 0 and after["requests"] == 0
