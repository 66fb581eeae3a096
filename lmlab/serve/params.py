"""A validated request -> token prompts and the engine's GenerationConfig.

Text prompts of /v1/completions are raw text: a `<|bos|>` is put in front (as `lmlab generate`
does, since training documents start with it) and special-token literals such as `<|eot|>` map
to their control ids, as HF tokenizers and vLLM do for raw completions. That gives a client no
power it lacks anyway (token-id prompts may hold any id). Chat messages go through the core
template, which escapes literals, so a message can never forge a turn.

`max_tokens` is capped by the room the context leaves; a prompt with no room at all is a 400
that says by how many tokens it is over.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from lmlab.errors import LmlabError
from lmlab.model.engine import GenerationConfig
from lmlab.serve.errors import ApiError, bad_request
from lmlab.serve.schemas import ChatRequest, CompletionRequest, SamplingFields
from lmlab.text.base import literal

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass
class Prepared:
    """One engine request's worth: the prompt, the config, what the response must show."""

    prompt: list[int]
    cfg: GenerationConfig
    echo_from: int | None = None  # echo prompt[echo_from:] (None: no echo)


def encode_raw(tok, text: str, add_bos: bool) -> list[int]:
    """Raw text -> ids: special-token literals become control ids; optional leading bos."""
    specials = tok.special_ids
    pattern = (
        "(" + "|".join(re.escape(literal(n)) for n in sorted(specials, key=len, reverse=True)) + ")"
    )
    ids: list[int] = []
    for i, part in enumerate(re.split(pattern, text)):
        if i % 2 == 1:
            ids.append(specials[part[2:-2]])
        elif part:
            ids += tok.encode(part)
    if add_bos and (not ids or ids[0] != tok.bos_id):
        ids.insert(0, tok.bos_id)
    return ids


def _context_error(n: int, context: int, param: str) -> ApiError:
    return ApiError(
        400,
        f"prompt of {n} tokens leaves no room for a completion in the context of {context} "
        f"tokens ({n + 1 - context} too many)",
        param=param,
        code="context_length_exceeded",
    )


def _sampling(req: SamplingFields, max_new: int, **extra) -> GenerationConfig:
    seed = req.seed if req.seed is not None else secrets.randbits(31)  # OpenAI: unseeded varies
    return GenerationConfig(
        max_new_tokens=max_new,
        temperature=req.temperature,
        top_k=req.top_k,
        top_p=req.top_p,
        seed=seed,
        stop_strings=tuple(req.stop or ()),
        kv_policy=req.kv_policy,
        kv_budget=req.kv_budget,
        kv_window=req.kv_window,
        kv_kernel=req.kv_kernel,
        kv_pooling=req.kv_pooling,
        kv_sinks=req.kv_sinks,
        kv_suffix=req.kv_suffix,
        num_samples=req.n,
        **extra,
    )


def prepare_completion(req: CompletionRequest, tok, context: int) -> list[Prepared]:
    vocab = tok.vocab_size
    out = []
    prompts = req.prompts()
    for i, p in enumerate(prompts):
        param = "prompt" if len(prompts) == 1 else f"prompt.{i}"
        if isinstance(p, str):
            ids = encode_raw(tok, p, add_bos=True)
            echo_from = 0 if p.startswith(literal("bos")) else 1  # echo what the client sent
        elif isinstance(p, list) and p and all(isinstance(t, int) for t in p):
            ids, echo_from = list(p), 0
            bad = next((t for t in ids if t >= vocab), None)
            if bad is not None:
                raise bad_request(
                    f"token id {bad} is outside the vocabulary of {vocab}", param=param
                )
        else:
            raise bad_request(
                "each prompt must be a string or a non-empty list of token ids", param
            )
        wanted = DEFAULT_COMPLETION_TOKENS if req.max_tokens is None else req.max_tokens
        room = context - len(ids)
        if room < 0 or (wanted > 0 and room < 1):
            raise _context_error(len(ids), context, param)
        stops = () if req.ignore_eos else (tok.eot_id,)
        extra = {"stop_tokens": stops, "banned_tokens": (tok.bos_id,)}
        if req.logprobs is not None:
            extra["logprobs"] = req.logprobs
            if req.echo:
                extra["prompt_logprobs"] = req.logprobs
        cfg = _sampling(req, min(wanted, room), **extra)
        out.append(Prepared(ids, cfg, echo_from if req.echo else None))
    return out


def prepare_chat(req: ChatRequest, tok, context: int) -> Prepared:
    from lmlab.text.chat import fit_for_reply, role_token_ids

    messages = [m.plain() for m in req.messages]
    wanted = req.max_completion_tokens or req.max_tokens or context
    try:
        ids, max_new = fit_for_reply(tok, messages, context, wanted)
    except LmlabError as e:
        code = "context_length_exceeded" if "does not fit" in str(e) else None
        raise ApiError(400, str(e), param="messages", code=code) from None
    stops = () if req.ignore_eos else (tok.eot_id,)
    extra = {"stop_tokens": stops, "banned_tokens": tuple(role_token_ids(tok))}
    if req.logprobs:
        extra["logprobs"] = req.top_logprobs or 0
    return Prepared(ids, _sampling(req, max_new, **extra))
