"""The one chat template, shared by SFT, chat, evaluation and the server.

    <|bos|> <|system|> ... <|eot|> <|user|> ... <|eot|> <|assistant|> ... <|eot|> ...

Loss falls on assistant content and the `<|eot|>` that closes it, so the model learns to stop.
A prompt for generation ends with `<|assistant|>`; `<|eot|>` is the stop token and the other
control tokens are banned while sampling (`role_token_ids`). Message content goes through
`Tokenizer.encode`, which escapes special-token literals: text cannot forge a turn boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.errors import LmlabError
from lmlab.text.base import Tokenizer

ROLES = ("system", "user", "assistant")


@dataclass
class Rendered:
    ids: list[int]
    loss_mask: list[int]  # 1 where the model is trained to predict the token
    dropped_turns: int  # oldest turns removed to fit max_tokens


def validate_messages(messages: object) -> list[dict]:
    """Check roles and content types; the error names the message index at fault."""
    if not isinstance(messages, list | tuple):
        raise LmlabError(
            f"messages must be a list of {{role, content}} objects, got {type(messages).__name__}"
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise LmlabError(
                f"message {i}: expected an object with role and content, got {type(m).__name__}"
            )
        role = m.get("role")
        if role not in ROLES:
            raise LmlabError(
                f"message {i}: unknown role {role!r} (expected system, user or assistant)"
            )
        if not isinstance(m.get("content"), str):
            raise LmlabError(
                f"message {i}: content must be a string, got {type(m.get('content')).__name__}"
            )
        if role == "system" and i != 0:
            raise LmlabError(f"message {i}: a system message may only come first")
    return list(messages)


def _segment(tok: Tokenizer, message: dict) -> tuple[list[int], list[int]]:
    content = tok.encode(message["content"])
    trained = int(message["role"] == "assistant")
    ids = [tok.special_id(message["role"]), *content, tok.eot_id]
    return ids, [0] + [trained] * (len(content) + 1)


def _layout(
    tok: Tokenizer, messages: list[dict], max_tokens: int | None, suffix: list[int], last: str
) -> Rendered:
    """bos + system, then turns (a user message and the replies up to the next user message),
    then `suffix`; whole turns are dropped oldest first until the total fits `max_tokens`."""
    head_ids, head_mask = [tok.bos_id], [0]
    if messages and messages[0]["role"] == "system":
        ids, mask = _segment(tok, messages[0])
        head_ids, head_mask = head_ids + ids, head_mask + mask
        messages = messages[1:]
    turns: list[tuple[list[int], list[int]]] = []
    for m in messages:
        ids, mask = _segment(tok, m)
        if m["role"] == "user" or not turns:
            turns.append((ids, mask))
        else:
            turns[-1] = (turns[-1][0] + ids, turns[-1][1] + mask)
    total = len(head_ids) + sum(len(t[0]) for t in turns) + len(suffix)
    dropped = 0
    if max_tokens is not None:
        while total > max_tokens and dropped < len(turns) - 1:
            total -= len(turns[dropped][0])
            dropped += 1
        if total > max_tokens:
            what = last if turns else "the system message"
            extra = " with the system message" if len(head_ids) > 1 and turns else ""
            raise LmlabError(
                f"conversation does not fit in {max_tokens} tokens: {what}{extra} alone needs "
                f"{total} ({total - max_tokens} too many)"
            )
    ids, mask = head_ids, head_mask
    for t_ids, t_mask in turns[dropped:]:
        ids, mask = ids + t_ids, mask + t_mask
    return Rendered(ids + suffix, mask + [0] * len(suffix), dropped)


def render_conversation_info(
    tok: Tokenizer, messages: list[dict], max_tokens: int | None = None
) -> Rendered:
    """`render_conversation`, also reporting how many turns were dropped to fit."""
    if hasattr(tok, "render_conversation_info"):  # a tokenizer with its own template (imported)
        return tok.render_conversation_info(messages, max_tokens)
    messages = validate_messages(messages)
    if not messages:
        raise LmlabError("conversation has no messages")
    return _layout(tok, messages, max_tokens, suffix=[], last="the last exchange")


def render_conversation(
    tok: Tokenizer, messages: list[dict], max_tokens: int | None = None
) -> tuple[list[int], list[int]]:
    """Ids and loss mask (equal length) of a whole conversation, for training.

    With `max_tokens`, the oldest turns are dropped (the system message stays) until it fits;
    a turn is never cut in the middle. If the last exchange alone does not fit, LmlabError says
    by how many tokens it exceeds.
    """
    r = render_conversation_info(tok, messages, max_tokens)
    return r.ids, r.loss_mask


def render_for_completion_info(
    tok: Tokenizer, messages: list[dict], max_tokens: int | None = None
) -> Rendered:
    """`render_for_completion`, also reporting how many turns were dropped to fit."""
    if hasattr(tok, "render_for_completion_info"):  # a tokenizer with its own template (imported)
        return tok.render_for_completion_info(messages, max_tokens)
    messages = validate_messages(messages)
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]  # the answer is what the model will write
    if not messages or messages[-1]["role"] != "user":
        raise LmlabError("nothing to answer: the conversation must end with a user message")
    suffix = [tok.special_id("assistant")]
    return _layout(tok, messages, max_tokens, suffix, last="the last user message")


def render_for_completion(
    tok: Tokenizer, messages: list[dict], max_tokens: int | None = None
) -> list[int]:
    """Prompt ids ending with `<|assistant|>`; a trailing assistant message is dropped.

    `max_tokens` is the room for the prompt (the caller subtracts max_new_tokens from the
    context); older turns are dropped to fit, and LmlabError says by how much the last user
    message alone exceeds it.
    """
    return render_for_completion_info(tok, messages, max_tokens).ids


MIN_REPLY = 16  # a reply cap is shrunk to fit a long prompt, but not below this


def fit_for_reply(
    tok: Tokenizer, messages: list[dict], context: int, max_new_tokens: int
) -> tuple[list[int], int]:
    """Prompt ids for the next assistant reply and the reply cap that fits the context.

    Old turns go first; if the system message and the last user message alone leave less than
    `max_new_tokens`, the cap shrinks (down to MIN_REPLY) instead of failing. LmlabError says by
    how much a message too long even for that exceeds the context.
    """
    floor = min(max_new_tokens, MIN_REPLY)
    try:
        ids = render_for_completion(tok, messages, max_tokens=context - max_new_tokens)
    except LmlabError:
        ids = render_for_completion(tok, messages, max_tokens=context - floor)
    return ids, min(max_new_tokens, context - len(ids))


def parse_conversation(tok: Tokenizer, ids: list[int]) -> list[dict]:
    """The inverse of rendering: ids back to messages.

    A final message without `<|eot|>` (a prompt awaiting its answer, or a generation cut short)
    is returned with its content so far, or left out if it has none.
    """
    role_of = {tok.special_id(r): r for r in ROLES}
    bos, eot = tok.bos_id, tok.eot_id
    ids = [int(i) for i in ids]
    start = 1 if ids and ids[0] == bos else 0
    messages: list[dict] = []
    role: str | None = None
    content: list[int] = []
    opened = 0
    for pos in range(start, len(ids)):
        t = ids[pos]
        if role is None:
            if t not in role_of:
                raise LmlabError(f"position {pos}: expected a role token, got {tok.decode([t])!r}")
            role, content, opened = role_of[t], [], pos
        elif t == eot:
            messages.append({"role": role, "content": tok.decode(content)})
            role = None
        elif t in role_of or t == bos:
            raise LmlabError(
                f"position {pos}: {tok.decode([t])} inside the {role} message opened at position {opened}"
            )
        else:
            content.append(t)
    if role is not None and content:
        messages.append({"role": role, "content": tok.decode(content)})
    return messages


def role_token_ids(tok: Tokenizer) -> list[int]:
    """Control tokens a sampler must never emit: bos and the role tokens (eot is the stop token)."""
    return [tok.special_id(n) for n in ("bos", *ROLES)]


__all__ = [
    "ROLES",
    "Rendered",
    "parse_conversation",
    "render_conversation",
    "render_conversation_info",
    "render_for_completion",
    "render_for_completion_info",
    "fit_for_reply",
    "role_token_ids",
    "validate_messages",
]
