"""A local Hugging Face tokenizer (a `save_pretrained` directory) behind lmlab's Tokenizer contract.

Imported models (`lmlab import --hf DIR`) keep their own tokenizer and chat template. lmlab's
special-token names map onto the tokenizer's own tokens, found by rendering a probe conversation
through its chat template:

    eot        the token that closes an assistant turn (ChatML `<|im_end|>`, Llama 3 `<|eot_id|>`);
               without a chat template, the eos token
    system, user, assistant
               the special token that opens a turn of that role (`<|im_start|>`, `<|start_header_id|>`);
               the bos token where the template has none (they are only ever banned while sampling)
    bos        the bos token; else `<|endoftext|>` (Qwen has no bos); else eos

Chat prompts go through the tokenizer's own template (`apply_chat_template`), and text never
yields a control token: special-token literals in text are encoded as plain characters, as
lmlab's own tokenizers do (transformers' `sanitize_control_tokens`).

A saved directory is the `save_pretrained` files plus `lmlab_tokenizer.json` (the name map and
the id-space size, which may exceed the tokenizer's when the model pads its embedding).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.text.base import Tokenizer
from lmlab.text.chat import ROLES, Rendered, validate_messages

KIND = "hf-pretrained"
MARKER = "lmlab_tokenizer.json"
_PROBE = {role: f"\ue000lmlab-probe-{role}\ue001" for role in ROLES}


def is_pretrained_dir(path: Path) -> bool:
    """Whether `path` holds a transformers tokenizer (written by save_pretrained)."""
    return (path / "tokenizer_config.json").is_file()


def _control_tokens(hf) -> list[str]:
    return [t.content for t in hf.added_tokens_decoder.values() if t.special and t.content]


def _render(hf, messages: list[dict], generation: bool, tokenize: bool):
    try:
        return hf.apply_chat_template(
            messages,
            add_generation_prompt=generation,
            tokenize=tokenize,
            return_dict=False,
            **({"sanitize_control_tokens": True} if tokenize else {}),
        )
    except LmlabError:
        raise
    except Exception as e:  # jinja's raise_exception, template errors: one line
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise LmlabError(
            f"the tokenizer's chat template refused the conversation: {first}"
        ) from None


def _probe(hf) -> tuple[str, list[tuple[int, str]]]:
    """A system/user/assistant conversation of marker strings rendered through the template, and
    where each control token lands in that text (("", []) when the template renders nothing)."""
    text = ""
    for roles in (ROLES, ROLES[1:]):  # some templates refuse a system message
        try:
            msgs = [{"role": r, "content": _PROBE[r]} for r in roles]
            text = _render(hf, msgs, generation=False, tokenize=False)
            break
        except LmlabError:
            continue
    specials = _control_tokens(hf)
    if not (text and specials):
        return text, []
    pattern = "|".join(map(re.escape, sorted(specials, key=len, reverse=True)))
    return text, [(m.start(), m.group()) for m in re.finditer(pattern, text)]


def infer_special_ids(hf) -> dict[str, int]:
    """lmlab names -> this tokenizer's ids (see the module docstring)."""
    vocab = hf.get_vocab()
    bos = hf.bos_token_id
    if bos is None:
        bos = vocab.get("<|endoftext|>", hf.eos_token_id)
    eot = hf.eos_token_id
    roles: dict[str, int] = {}
    if hf.chat_template:
        text, found = _probe(hf)
        reply = text.find(_PROBE["assistant"])
        after = [s for pos, s in found if reply >= 0 and pos > reply]
        if after:  # the first control token after the reply closes the turn
            eot = vocab[after[0]]
        start = 0
        for role in ROLES:
            at = text.find(_PROBE[role])
            if at < 0:
                continue
            # the first control token of the turn, past the previous turn's end
            openers = [vocab[s] for pos, s in found if start <= pos < at]
            openers = [i for i in openers if i not in (bos, eot)]
            if openers:
                roles[role] = openers[0]
            start = at + len(_PROBE[role])
    if bos is None and eot is None:
        raise LmlabError("the tokenizer defines neither a bos nor an eos token")
    bos = eot if bos is None else bos
    eot = bos if eot is None else eot
    ids = {"bos": bos, "eot": eot}
    for role in ROLES:
        ids[role] = roles.get(role, roles.get("user", bos))
    if hf.pad_token_id is not None:
        ids["pad"] = hf.pad_token_id
    if hf.unk_token_id is not None:
        ids["unk"] = hf.unk_token_id
    return ids


class PretrainedTokenizer(Tokenizer):
    """A transformers tokenizer (fast) with lmlab's names for its special tokens."""

    kind = KIND

    def __init__(
        self, hf, special_ids: dict[str, int] | None = None, vocab_size: int | None = None
    ):
        self._hf = hf
        super().__init__(special_ids or infer_special_ids(hf))
        self._vocab_size = max(int(vocab_size or 0), len(hf))
        self._control = set(hf.all_special_ids) | set(self._special_ids.values())
        specials = sorted(_control_tokens(hf), key=len, reverse=True)
        # Base `encode` escapes whatever this matches: here the tokenizer's own control tokens.
        self._literal_re = (
            re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        )

    @classmethod
    def from_dir(cls, path: str | Path, vocab_size: int | None = None) -> PretrainedTokenizer:
        from transformers import AutoTokenizer

        path = Path(path)
        try:
            hf = AutoTokenizer.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=False
            )
        except Exception as e:
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise LmlabError(f"cannot load the tokenizer in {path}: {first}") from None
        if not getattr(hf, "is_fast", False):
            raise LmlabError(f"{path}: only fast (tokenizer.json) tokenizers are supported")
        marker = path / MARKER
        if marker.is_file():
            saved = json.loads(marker.read_text())
            return cls(hf, saved["special_ids"], vocab_size or saved.get("vocab_size"))
        return cls(hf, vocab_size=vocab_size)

    @property
    def hf(self):
        """The wrapped transformers tokenizer."""
        return self._hf

    # ---- backend primitives -------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def _encode_plain(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False)

    def _encode_plain_batch(self, texts: list[str]) -> list[list[int]]:
        return self._hf(texts, add_special_tokens=False)["input_ids"] if texts else []

    def _escaped(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False, split_special_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Encode as the HF tokenizer does, except that control-token literals stay plain text."""
        if self._literal_re is None or not self._literal_re.search(text):
            return self._encode_plain(text)
        ids: list[int] = []
        for i, part in enumerate(self._literal_re.split(text)):
            if part:
                ids += self._escaped(part) if i % 2 else self._encode_plain(part)
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = list(texts)
        if self._literal_re is None or not any(self._literal_re.search(t) for t in texts):
            return self._encode_plain_batch(texts)
        return [self.encode(t) for t in texts]

    def _decode_plain(self, ids: list[int]) -> str:
        return self._hf.decode(ids, skip_special_tokens=False)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Ids to text as the HF tokenizer decodes them (control tokens as its own literals)."""
        ids = [i for i in self._checked(ids) if i < len(self._hf)]  # padded rows: no text
        if skip_special:
            ids = [i for i in ids if i not in self._control]
        return self._hf.decode(ids, skip_special_tokens=False)

    def is_special(self, token_id: int) -> bool:
        return int(token_id) in self._control

    def id_to_piece(self, token_id: int) -> str:
        return self._hf.convert_ids_to_tokens(int(token_id)) or ""

    def _content(self) -> bytes:
        raw = json.loads(self._hf.backend_tokenizer.to_str())
        obj = {
            "tokenizer": raw,
            "chat_template": self._hf.chat_template,
            "special_ids": self._special_ids,
            "vocab_size": self._vocab_size,
        }
        return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "spm.model").unlink(missing_ok=True)
        self._hf.save_pretrained(str(directory))
        marker = {"kind": KIND, "special_ids": self._special_ids, "vocab_size": self._vocab_size}
        (directory / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        return directory

    # ---- chat (lmlab.text.chat defers here) ---------------------------------------------
    def _chat_ids(self, messages: list[dict], generation: bool) -> list[int]:
        if not self._hf.chat_template:
            raise LmlabError(
                "this tokenizer has no chat template: use `lmlab generate` for plain text"
            )
        ids = _render(self._hf, messages, generation, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)

    def _fit(self, messages: list[dict], max_tokens: int | None, render, last: str) -> Rendered:
        """Render, dropping whole turns (a user message and its replies) oldest first to fit."""
        head = messages[:1] if messages and messages[0]["role"] == "system" else []
        body = messages[len(head) :]
        starts = [i for i, m in enumerate(body) if m["role"] == "user" or i == 0] or [0]
        for dropped, start in enumerate(starts):
            r = render(head + body[start:])
            if max_tokens is None or len(r.ids) <= max_tokens:
                return Rendered(r.ids, r.loss_mask, dropped)
        extra = " with the system message" if head else ""
        raise LmlabError(
            f"conversation does not fit in {max_tokens} tokens: {last}{extra} alone needs "
            f"{len(r.ids)} ({len(r.ids) - max_tokens} too many)"
        )

    def render_for_completion_info(
        self, messages: list[dict], max_tokens: int | None = None
    ) -> Rendered:
        """The template's prompt for the next assistant reply (generation prompt included)."""
        messages = validate_messages(messages)
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages or messages[-1]["role"] != "user":
            raise LmlabError("nothing to answer: the conversation must end with a user message")

        def render(msgs: list[dict]) -> Rendered:
            ids = self._chat_ids(msgs, generation=True)
            return Rendered(ids, [0] * len(ids), 0)

        return self._fit(messages, max_tokens, render, "the last user message")

    def render_conversation_info(
        self, messages: list[dict], max_tokens: int | None = None
    ) -> Rendered:
        """A whole conversation with loss on each assistant reply: the tokens its rendering adds
        after the prompt that precedes it (its content and the template's end of turn)."""
        messages = validate_messages(messages)
        if not messages:
            raise LmlabError("conversation has no messages")

        def render(msgs: list[dict]) -> Rendered:
            ids = self._chat_ids(msgs, generation=False)
            mask = [0] * len(ids)
            for i, m in enumerate(msgs):
                if m["role"] != "assistant":
                    continue
                start = len(self._chat_ids(msgs[:i], generation=True)) if i else 0
                end = len(self._chat_ids(msgs[: i + 1], generation=False))
                mask[start:end] = [1] * (end - start)
            return Rendered(ids, mask, 0)

        return self._fit(messages, max_tokens, render, "the last exchange")


def load(path: str | Path) -> PretrainedTokenizer:
    return PretrainedTokenizer.from_dir(path)
