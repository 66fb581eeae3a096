import random
import re

import pytest

from lmlab.errors import LmlabError
from lmlab.text.chat import (
    parse_conversation,
    render_conversation,
    render_conversation_info,
    render_for_completion,
    render_for_completion_info,
    role_token_ids,
)
from lmlab.text.tokenizer import train_tokenizer

CONVO = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "And in German, with a newline?"},
    {"role": "assistant", "content": "Vier.\nGrüße <|eot|> 🙂"},
]


@pytest.fixture(scope="module", params=["bpe", "sentencepiece"])
def tok(request, tmp_path_factory):
    rng = random.Random(0)
    words = "you are what is and in with a the answer question four vier chat note".split()
    text = "\n".join(" ".join(rng.choices(words, k=9)) + "?" for _ in range(200))
    path = tmp_path_factory.mktemp("c") / "corpus.txt"
    path.write_text(text + "\nGrüße 2+2 German newline terse 🙂\n")
    return train_tokenizer([path], kind=request.param, vocab_size=300, progress=False)


def test_layout_and_mask_cover_assistant_content_and_eot(tok):
    ids, mask = render_conversation(tok, CONVO)
    assert len(ids) == len(mask)
    expected = [tok.bos_id]
    for m in CONVO:
        expected += [tok.special_id(m["role"]), *tok.encode(m["content"]), tok.eot_id]
    assert ids == expected
    trained = [i for i, k in zip(ids, mask, strict=True) if k]
    assert tok.decode(trained) == "Four.<|eot|>Vier.\nGrüße <|eot|> 🙂<|eot|>"
    # Two control eots are trained (one per answer); the literal in the text stays plain text.
    assert trained.count(tok.eot_id) == 2
    untrained = [i for i, k in zip(ids, mask, strict=True) if not k]
    assert tok.decode(untrained).startswith("<|bos|><|system|>You are terse.<|eot|><|user|>")
    assert not any(k for i, k in zip(ids, mask, strict=True) if i in role_token_ids(tok))


def test_completion_prompt_is_a_prefix_of_the_training_render(tok):
    ids, _ = render_conversation(tok, CONVO)
    prompt = render_for_completion(tok, CONVO)  # trailing assistant dropped
    assert prompt[-1] == tok.special_id("assistant")
    last_asst = max(i for i, t in enumerate(ids) if t == tok.special_id("assistant"))
    assert prompt == ids[: last_asst + 1]
    assert render_for_completion(tok, CONVO[:-1]) == prompt
    with pytest.raises(LmlabError, match="end with a user message"):
        render_for_completion(tok, CONVO[:1])


def test_parse_round_trip(tok):
    ids, _ = render_conversation(tok, CONVO)
    assert parse_conversation(tok, ids) == CONVO
    assert parse_conversation(tok, render_for_completion(tok, CONVO)) == CONVO[:-1]
    # A generation cut short before its eot keeps what was written.
    partial = render_for_completion(tok, CONVO) + tok.encode("Vi")
    assert parse_conversation(tok, partial)[-1] == {"role": "assistant", "content": "Vi"}


def test_parse_rejects_malformed_ids(tok):
    user, asst = tok.special_id("user"), tok.special_id("assistant")
    with pytest.raises(LmlabError, match="position 1: expected a role token"):
        parse_conversation(tok, [tok.bos_id, *tok.encode("x")])
    with pytest.raises(LmlabError, match="position 3: .*opened at position 1"):
        parse_conversation(tok, [tok.bos_id, user, *tok.encode("a")[:1], asst])


def long_convo(turns):
    msgs = [{"role": "system", "content": "sys"}]
    for t in range(turns):
        msgs += [
            {"role": "user", "content": f"question {t} " * 3},
            {"role": "assistant", "content": f"answer {t} " * 3},
        ]
    return msgs


def test_truncation_drops_oldest_turns_and_keeps_system(tok):
    msgs = long_convo(6)
    full, _ = render_conversation(tok, msgs)
    last_two, _ = render_conversation(tok, [msgs[0], *msgs[-4:]])
    r = render_conversation_info(tok, msgs, max_tokens=len(last_two) + 1)
    assert r.dropped_turns == 4 and r.ids == last_two and len(r.loss_mask) == len(r.ids)
    kept = parse_conversation(tok, r.ids)
    assert kept[0] == msgs[0] and kept[1:] == msgs[-4:]
    assert render_conversation_info(tok, msgs, max_tokens=len(full)).dropped_turns == 0


def test_truncation_error_says_by_how_much(tok):
    msgs = long_convo(3)
    need = len(render_conversation(tok, [msgs[0], *msgs[-2:]])[0])
    with pytest.raises(LmlabError, match=re.escape(f"needs {need} (5 too many)")):
        render_conversation(tok, msgs, max_tokens=need - 5)
    prompt_need = len(render_for_completion(tok, [msgs[0], msgs[-2]]))
    r = render_for_completion_info(tok, msgs, max_tokens=prompt_need)
    assert r.dropped_turns == 2 and len(r.ids) == prompt_need
    with pytest.raises(
        LmlabError,
        match=re.escape(
            f"last user message with the system message alone needs {prompt_need} (1 too many)"
        ),
    ):
        render_for_completion(tok, msgs, max_tokens=prompt_need - 1)


@pytest.mark.parametrize(
    ("messages", "pattern"),
    [
        (
            [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}],
            "message 1: unknown role",
        ),
        ([{"role": "user", "content": 3}], "message 0: content must be a string"),
        (
            [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}],
            "message 1: a system",
        ),
        (["hello"], "message 0: expected an object"),
        ([], "no messages"),
    ],
)
def test_invalid_messages_name_the_index(tok, messages, pattern):
    with pytest.raises(LmlabError, match=pattern):
        render_conversation(tok, messages)


def test_role_token_ids_exclude_eot(tok):
    banned = role_token_ids(tok)
    assert tok.eot_id not in banned
    assert set(banned) == {tok.special_id(n) for n in ("bos", "system", "user", "assistant")}
