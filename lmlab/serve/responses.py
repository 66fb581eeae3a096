"""Engine results -> OpenAI response objects and server-sent-event chunks.

Log-probs follow OpenAI's two shapes: the legacy completions object (`tokens`, `token_logprobs`,
`top_logprobs` as {token: logprob}, `text_offset`) that lm-evaluation-harness reads, and the chat
`content` list. Each choice also carries `kv`: the policy and budget applied, the prompt length
and the KV positions retained per layer, so a client can check that its budget took effect.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from lmlab.serve.params import Prepared


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def kv_report(p: Prepared, gen) -> dict:
    """Fields merged into each choice (flat: `choices[i].kv_retained` is what clients read)."""
    return {
        "kv_policy": p.cfg.kv_policy,
        "kv_budget": p.cfg.kv_budget,
        "prompt_tokens": len(p.prompt),
        "kv_retained": list(gen.kv_retained),
    }


class Pieces:
    """Token id -> the text it stands for (cached: the same ids recur all the time)."""

    def __init__(self, tok):
        self.tok = tok
        self._cache: dict[int, str] = {}

    def __call__(self, t: int) -> str:
        s = self._cache.get(t)
        if s is None:
            s = self._cache[t] = self.tok.decode([t])
        return s


def completion_logprobs(
    pieces: Pieces,
    ids: list[int],
    lps: list[float | None],
    tops: list[list[tuple[int, float]] | None] | None,
    offset: int = 0,
) -> dict:
    toks = [pieces(t) for t in ids]
    offsets, at = [], offset
    for s in toks:
        offsets.append(at)
        at += len(s)
    top_dicts: list[dict[str, float] | None] = []
    for row in tops or [None] * len(ids):
        if row is None:
            top_dicts.append(None)
            continue
        d: dict[str, float] = {}
        for t, lp in row:  # most likely first: a piece shared by two ids keeps the larger
            d.setdefault(pieces(t), lp)
        top_dicts.append(d)
    return {
        "tokens": toks,
        "token_logprobs": list(lps),
        "top_logprobs": top_dicts if tops is not None else None,
        "text_offset": offsets,
    }


def merge_logprobs(a: dict, b: dict) -> dict:
    out = {k: a[k] + b[k] for k in ("tokens", "token_logprobs", "text_offset")}
    tops_a = a["top_logprobs"] or [None] * len(a["tokens"])
    tops_b = b["top_logprobs"] or [None] * len(b["tokens"])
    has_tops = a["top_logprobs"] is not None or b["top_logprobs"] is not None
    out["top_logprobs"] = tops_a + tops_b if has_tops else None
    return out


def chat_logprobs(pieces: Pieces, ids: list[int], lps: list[float], tops) -> dict:
    def entry(t: int, lp: float) -> dict:
        s = pieces(t)
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

    content = []
    for i, (t, lp) in enumerate(zip(ids, lps, strict=True)):
        e = entry(t, lp)
        e["top_logprobs"] = [entry(tt, tlp) for tt, tlp in (tops[i] if tops else [])]
        content.append(e)
    return {"content": content, "refusal": None}


def echo_part(
    pieces: Pieces, p: Prepared, result_prompt_lps, result_prompt_tops
) -> tuple[str, dict | None]:
    """The echoed prompt text and (when asked) its log-probs, from `echo_from` on."""
    ids = p.prompt[p.echo_from or 0 :]
    text = pieces.tok.decode(ids)
    if p.cfg.prompt_logprobs is None:
        return text, None
    start = p.echo_from or 0
    lps = list(result_prompt_lps or [None] * len(p.prompt))[start:]
    tops = result_prompt_tops[start:] if result_prompt_tops is not None else None
    return text, completion_logprobs(pieces, ids, lps, tops)


def completion_choice(pieces: Pieces, p: Prepared, gen, index: int, echo=None) -> dict:
    text = gen.text or ""
    logprobs = None
    if p.cfg.logprobs is not None:
        offset = len(echo[0]) if echo else 0
        logprobs = completion_logprobs(
            pieces, gen.tokens, gen.logprobs or [], gen.top_logprobs, offset
        )
    if echo:
        text = echo[0] + text
        if echo[1] is not None:
            logprobs = merge_logprobs(echo[1], logprobs) if logprobs else echo[1]
    return {
        "index": index,
        "text": text,
        "logprobs": logprobs,
        "finish_reason": gen.finish_reason,
        **kv_report(p, gen),
    }


def chat_choice(pieces: Pieces, p: Prepared, gen, index: int) -> dict:
    logprobs = None
    if p.cfg.logprobs is not None:
        logprobs = chat_logprobs(pieces, gen.tokens, gen.logprobs or [], gen.top_logprobs)
    return {
        "index": index,
        "message": {"role": "assistant", "content": gen.text or "", "refusal": None},
        "logprobs": logprobs,
        "finish_reason": gen.finish_reason,
        **kv_report(p, gen),
    }


def envelope(kind: str, rid: str, model: str, choices: list, usage_: dict | None) -> dict:
    out = {
        "id": rid,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage_ is not None or kind in ("text_completion", "chat.completion"):
        out["usage"] = usage_
    return out
