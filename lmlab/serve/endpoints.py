"""/v1/completions and /v1/chat/completions: submit jobs, then answer at once or as a stream.

One HTTP request becomes one job per prompt (a job of n samples shares one prefill). Jobs are
submitted together (all or none: 429 when the queue is full). If the client goes away, its jobs
are cancelled, and the scheduler drops their rows at the next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, StreamingResponse

from lmlab.serve import responses as R
from lmlab.serve.errors import ApiError
from lmlab.serve.params import Prepared
from lmlab.serve.scheduler import Job

DISCONNECT_POLL_S = 0.25


@dataclass
class Outcome:
    """What one job produced: its samples (by sample index) and the engine's handle."""

    samples: list[Any]
    handle: Any = None
    done: bool = False


@dataclass
class Call:
    """One HTTP generation request in flight."""

    kind: str  # "text_completion" | "chat.completion"
    model: str
    prepared: list[Prepared]
    stream: bool
    include_usage: bool
    jobs: list[Job] = field(default_factory=list)
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    rid: str = ""

    def __post_init__(self):
        self.rid = R.new_id("chatcmpl" if self.kind == "chat.completion" else "cmpl")

    def base(self, index: int) -> int:
        """Choice index of sample 0 of prompt `index` (choices are prompt-major)."""
        return sum(p.cfg.num_samples for p in self.prepared[:index])


def prompt_logprobs(handle) -> tuple[list | None, list | None]:
    result = getattr(handle, "result", handle)
    return getattr(result, "prompt_logprobs", None), getattr(result, "prompt_top_logprobs", None)


async def run_call(state, http: HttpRequest, call: Call):
    loop = asyncio.get_running_loop()
    call.jobs = [
        Job(p, i, call.out, loop, state.settings.request_timeout)
        for i, p in enumerate(call.prepared)
    ]
    state.scheduler.submit(call.jobs)  # may raise 429
    if call.stream:
        return StreamingResponse(
            _stream(state, call),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        outcomes = await _wait(http, call)
    finally:
        state.scheduler.cancel(call.jobs)  # no-op for finished jobs
    return JSONResponse(_full_response(state, call, outcomes))


async def _collect(call: Call) -> list[Outcome]:
    outcomes = [Outcome([None] * p.cfg.num_samples) for p in call.prepared]
    pending = len(call.jobs)
    while pending:
        index, kind, payload = await call.out.get()
        if kind == "error":
            raise payload
        if kind == "done":
            outcomes[index].samples[payload.sample_index] = payload
        elif kind == "finished":
            outcomes[index].handle, outcomes[index].done = payload, True
            pending -= 1
    return outcomes


async def _wait(http: HttpRequest, call: Call) -> list[Outcome]:
    """The outcomes, watching for the client to hang up meanwhile."""
    task = asyncio.ensure_future(_collect(call))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await http.is_disconnected():
                raise ApiError(499, "client closed the request")
    finally:
        task.cancel()


def _full_response(state, call: Call, outcomes: list[Outcome]) -> dict:
    pieces = state.pieces
    choices = []
    for i, (p, o) in enumerate(zip(call.prepared, outcomes, strict=True)):
        echo = None
        if p.echo_from is not None:
            echo = R.echo_part(pieces, p, *prompt_logprobs(o.handle))
        for j, gen in enumerate(o.samples):
            index = call.base(i) + j
            if call.kind == "chat.completion":
                choices.append(R.chat_choice(pieces, p, gen, index))
            else:
                choices.append(R.completion_choice(pieces, p, gen, index, echo))
    completion = sum(len(g.tokens) for o in outcomes for g in o.samples)
    prompt = sum(len(p.prompt) for p in call.prepared)
    return R.envelope(call.kind, call.rid, call.model, choices, R.usage(prompt, completion))


def _chunk(call: Call, choices: list[dict], usage=None) -> str:
    kind = "chat.completion.chunk" if call.kind == "chat.completion" else "text_completion"
    out = R.envelope(kind, call.rid, call.model, choices, None)
    if call.include_usage:
        out["usage"] = usage
    return R.sse(out)


def _delta_choice(call: Call, index: int, text: str, finish=None, logprobs=None, first=False):
    if call.kind == "chat.completion":
        delta = (
            {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
        )
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def _final_logprobs(state, call: Call, p: Prepared, gen) -> dict | None:
    """A streamed choice's log-probs, all in its last chunk (engine events carry none)."""
    if p.cfg.logprobs is None:
        return None
    if call.kind == "chat.completion":
        return R.chat_logprobs(state.pieces, gen.tokens, gen.logprobs or [], gen.top_logprobs)
    return R.completion_logprobs(state.pieces, gen.tokens, gen.logprobs or [], gen.top_logprobs)


async def _stream(state, call: Call) -> AsyncIterator[str]:
    completion_tokens = 0
    try:
        for i, p in enumerate(call.prepared):  # the opening chunk of every choice
            text = state.tok.decode(p.prompt[p.echo_from :]) if p.echo_from is not None else ""
            if call.kind == "chat.completion" or text:
                yield _chunk(call, [_delta_choice(call, call.base(i) + j, text, first=True)
                                    for j in range(p.cfg.num_samples)])  # fmt: skip
        pending = len(call.jobs)
        while pending:
            index, kind, payload = await call.out.get()
            p = call.prepared[index]
            if kind == "error":
                yield R.sse(payload.body())
                break
            if kind == "event" and payload.text:
                choice = _delta_choice(call, call.base(index) + payload.sample, payload.text)
                yield _chunk(call, [choice])
            elif kind == "done":
                completion_tokens += len(payload.tokens)
                lps = _final_logprobs(state, call, p, payload)
                index_ = call.base(index) + payload.sample_index
                choice = _delta_choice(call, index_, "", payload.finish_reason, lps)
                choice.update(R.kv_report(p, payload))
                yield _chunk(call, [choice])
            elif kind == "finished":
                pending -= 1
        else:
            if call.include_usage:
                prompt = sum(len(p.prompt) for p in call.prepared)
                yield _chunk(call, [], R.usage(prompt, completion_tokens))
        yield R.SSE_DONE
    finally:
        state.scheduler.cancel(call.jobs)
