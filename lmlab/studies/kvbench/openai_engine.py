"""Any OpenAI-compatible endpoint, over httpx: `/v1/completions` (or `/v1/chat/completions`) with
the KV extension fields `kv_policy`, `kv_budget` and the policy options (and `kv_suffix`, the
prompt tokens prefilled after compression, when the config asks for it) in the body (the `extra_body` of the official
client).

`max_rpm` spaces request starts (a shared clock, so it holds across threads), `concurrency` caps
requests in flight, and 429s and timeouts are retried with exponential back-off (a server's
Retry-After wins). A server that reports what it kept (`kv_retained` per layer, at the top of the
response, in `usage`, or in `kv: {retained: [...]}`) makes the run's budgets verifiable; one that
does not leaves them "budget unverified".
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import httpx

from lmlab.errors import LmlabError
from lmlab.studies.kvbench.config import OpenAIEngine
from lmlab.studies.kvbench.engines import BenchEngine, Item, Reply, count_suffix
from lmlab.studies.kvbench.metrics import error_type_for


class RateLimiter:
    """At most `rpm` request starts per minute: each start waits for its slot on a shared clock."""

    def __init__(self, rpm: float):
        self.interval = 60.0 / rpm if rpm > 0 else 0.0
        self.next_at = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            at = max(now, self.next_at)
            self.next_at = at + self.interval
        if at > now:
            time.sleep(at - now)


def retained_from(body: dict) -> list[int] | None:
    for holder in (body, body.get("usage") or {}, body.get("kv") or {}):
        for key in ("kv_retained", "retained"):
            value = holder.get(key) if isinstance(holder, dict) else None
            if isinstance(value, list) and all(isinstance(v, int) for v in value):
                return value
    choices = body.get("choices") or [{}]
    value = choices[0].get("kv_retained") if isinstance(choices[0], dict) else None
    return value if isinstance(value, list) else None


class OpenAIBench(BenchEngine):
    kind = "openai"

    def __init__(self, cfg: OpenAIEngine):
        self.cfg = cfg
        self.base = cfg.base_url.rstrip("/")
        key = os.environ.get(cfg.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(headers=headers, timeout=cfg.timeout_s)
        self.limiter = RateLimiter(cfg.max_rpm)
        self.tok = None
        if cfg.tokenizer:
            from lmlab.text.tokenizer import load_tokenizer

            self.tok = load_tokenizer(cfg.tokenizer)
        self.length_unit = "tokens" if self.tok else "words"
        self.calls = 0  # requests sent, retries included (tests read it)
        self.peak_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()

    def model_id(self) -> str:
        return f"{self.base}#{self.cfg.model}"

    def policies(self) -> tuple[str, ...]:
        return tuple(self.cfg.policies)

    def preflight(self) -> None:
        try:
            self.client.get(f"{self.base}/models", timeout=min(self.cfg.timeout_s, 10.0))
        except httpx.HTTPError as e:
            raise LmlabError(
                f"cannot reach the endpoint {self.base} ({type(e).__name__}: {e}); is the "
                "server running? (engine.base_url)"
            ) from None

    def fit(self, text: str, max_new: int, truncate: str) -> tuple[int, int]:
        n = len(self.tok.encode(text)) if self.tok else len(text.split())
        return n, n

    def suffix_tokens(self, prompt: str, suffix: str) -> int:
        if self.tok is None:
            raise LmlabError(
                "generation.kv_suffix: a text suffix is sent as a token count, which needs "
                "engine.tokenizer (the server's tokenizer folder); or give a number of tokens"
            )
        return count_suffix(self.tok.encode, prompt, suffix)

    def run_cell(self, items, policy, budget, options, gen):
        def one(it: Item) -> tuple[Item, Reply]:
            return it, self._request(it, policy, budget, options, gen)

        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            futures = [pool.submit(one, it) for it in items]
            for fut in as_completed(futures):
                yield fut.result()

    def _body(self, it: Item, policy, budget, options, gen) -> tuple[str, dict]:
        body = {
            "model": self.cfg.model,
            "max_tokens": it.max_new_tokens,
            "temperature": gen.temperature,
            "seed": gen.seed,
            "kv_policy": policy,
            "kv_budget": budget,
            "kv_window": options.window,
            "kv_kernel": options.kernel,
            "kv_pooling": options.pooling,
            "kv_sinks": options.sinks,
        }
        if it.kv_suffix:  # only when asked: a server without the extension may refuse the field
            body["kv_suffix"] = it.kv_suffix
        body["stop"] = ["\n"] if gen.stop_at_newline else []  # explicit: some servers need it
        if self.cfg.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": it.prompt}]
            return f"{self.base}/chat/completions", body
        body["prompt"] = it.prompt
        return f"{self.base}/completions", body

    def _request(self, it: Item, policy, budget, options, gen) -> Reply:
        url, body = self._body(it, policy, budget, options, gen)
        attempt, delay = 0, self.cfg.backoff_s
        while True:
            attempt += 1
            self.limiter.wait()
            with self._lock:
                self.calls += 1
                self._in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            t0 = time.perf_counter()
            status, error, retry_after = None, None, None
            try:
                resp = self.client.post(url, json=body)
                status = resp.status_code
                if status == 200:
                    return self._parse(resp.json(), time.perf_counter() - t0, attempt)
                error = f"HTTP {status}: {resp.text[:200]}"
                retry_after = resp.headers.get("retry-after")
            except httpx.TimeoutException as e:
                error = f"timeout after {self.cfg.timeout_s} s ({type(e).__name__})"
            except httpx.HTTPError as e:
                error = f"{type(e).__name__}: {e}"
            except ValueError as e:  # a 200 whose body is not JSON
                return Reply(error_type="FORMAT_ERROR", error=f"bad JSON: {e}", attempts=attempt)
            finally:
                with self._lock:
                    self._in_flight -= 1
            kind = error_type_for(error, status)
            if kind not in ("RATE_LIMITED", "TIMEOUT") or attempt > self.cfg.retries:
                return Reply(error_type=kind, error=error, attempts=attempt)
            wait = delay
            if retry_after:
                try:
                    wait = float(retry_after)
                except ValueError:
                    pass
            time.sleep(wait)
            delay *= 2

    def _parse(self, data: dict, latency: float, attempts: int) -> Reply:
        choice = (data.get("choices") or [{}])[0]
        text = choice.get("text")
        if text is None:
            text = (choice.get("message") or {}).get("content") or ""
        usage = data.get("usage") or {}
        return Reply(
            text=text,
            finish_reason=choice.get("finish_reason"),
            attempts=attempts,
            latency_s=latency,
            ttft_s=None,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            kv_retained=retained_from(data),
        )
