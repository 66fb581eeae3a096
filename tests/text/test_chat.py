import random
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmlab.errors import LmlabError
from lmlab.model.checkpoint import save_checkpoint
from lmlab.model.config import ModelConfig
from lmlab.model.gpt import GPT
from lmlab.text.chat import (
    Rendered,
    parse_conversation,
    render_conversation,
    render_conversation_info,
    render_for_completion,
    render_for_completion_info,
    role_token_ids,
)
from lmlab.text.tokenizer import train_tokenizer
from tests.conftest import run_lmlab

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


# ---- render -> parse is the identity (property) ------------------------------------------------

PIECES = ["a", "the ", "answer", "?", "\n", "Grüße", "🙂", "2+2", "<|eot|>", "<|user|>", "<|"]
CONTENT = st.lists(st.sampled_from(PIECES), max_size=6).map("".join)
CONVERSATIONS = st.tuples(
    st.one_of(st.none(), CONTENT),
    st.lists(st.tuples(st.sampled_from(["user", "assistant"]), CONTENT), min_size=1, max_size=5),
).map(
    lambda sm: (
        ([{"role": "system", "content": sm[0]}] if sm[0] is not None else [])
        + [{"role": r, "content": c} for r, c in sm[1]]
    )
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=CONVERSATIONS)
def test_render_then_parse_round_trips(tok, messages):
    ids, mask = render_conversation(tok, messages)
    assert parse_conversation(tok, ids) == messages
    # the loss mask covers exactly the assistant contents and their closing eots
    trained = [i for i, k in zip(ids, mask, strict=True) if k]
    expect = [t for m in messages if m["role"] == "assistant" for t in tok.encode(m["content"])]
    assert [t for t in trained if t != tok.eot_id] == expect
    assert trained.count(tok.eot_id) == sum(m["role"] == "assistant" for m in messages)


# ---- the chat command stops at eot and never writes a role token -------------------------------


def bigram_checkpoint(tok, root: Path, table: dict[int, list[int]], default: int) -> Path:
    """A run dir whose GPT is a lookup table: after token x the most likely next tokens are
    table[x], best first (`default` for any other x). The blocks' output projections are zero
    (the init), so logits depend only on the last token's embedding."""
    V = tok.vocab_size
    cfg = ModelConfig(
        depth=1, n_embd=V + (-V) % 8, n_head=4, vocab_size=V, seq_len=128, logit_softcap=None
    )
    model = GPT(cfg)
    with torch.no_grad():
        model.wte.weight.zero_()
        model.wte.weight[:, :V] = torch.eye(V)  # token x -> e_x; after RMSNorm sqrt(n_embd) e_x
        head = torch.zeros(V, cfg.n_embd)
        for x in range(V):
            for rank, nxt in enumerate(table.get(x, [default])):
                head[nxt, x] = (10.0 - rank) / cfg.n_embd**0.5
        model.lm_head.weight.copy_(head)
    run = root / "bigram"
    meta = {"model": cfg.model_dump(mode="json"), "tokenizer": tok.meta(), "step": 0}
    if hasattr(model, "arch"):
        meta["arch"] = model.arch()
    save_checkpoint(run / "checkpoints" / "latest", model, meta)
    tok.save(run / "tokenizer")
    return run


def test_chat_reply_stops_at_eot_and_skips_banned_role_tokens(tok, tmp_path):
    a, b, c = (tok.encode(w)[0] for w in ("a", "the", "?"))
    user, asst, eot = tok.special_id("user"), tok.special_id("assistant"), tok.eot_id
    table = {
        asst: [a],  # the reply starts with a
        a: [user, b, eot],  # a role token is most likely next: banned, so b
        b: [eot, c],  # then the stop token
        eot: [c],  # were eot not a stop, the reply would go on with c c c ...
        user: [c],  # were the role token not banned, c c c ...
    }
    run = bigram_checkpoint(tok, tmp_path, table, default=c)
    proc = run_lmlab(
        "chat",
        "--ckpt",
        run,
        "--prompt",
        "hello",
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
        check=0,
    )
    assert proc.stdout.strip() == tok.decode([a, b]).strip()


# ---- exact messages, edges of the layout, a tokenizer's own template ---------------------------


@pytest.mark.parametrize(
    ("messages", "exact"),
    [
        ("hi", "messages must be a list of {role, content} objects, got str"),
        (["hello"], "message 0: expected an object with role and content, got str"),
        ([{"role": "user", "content": 3}], "message 0: content must be a string, got int"),
        ([{"role": "user"}], "message 0: content must be a string, got NoneType"),
        ([], "conversation has no messages"),
    ],
)
def test_invalid_messages_exact_errors(tok, messages, exact):
    with pytest.raises(LmlabError) as err:
        render_conversation(tok, messages)
    assert str(err.value) == exact


def test_without_a_system_message_the_first_turn_can_be_dropped(tok):
    msgs = long_convo(3)[1:]  # no system message
    last, _ = render_conversation(tok, msgs[-2:])
    r = render_conversation_info(tok, msgs, max_tokens=len(last))
    assert r.dropped_turns == 2 and parse_conversation(tok, r.ids) == msgs[-2:]
    with pytest.raises(LmlabError) as err:
        render_conversation(tok, msgs, max_tokens=len(last) - 1)
    assert str(err.value) == (
        f"conversation does not fit in {len(last) - 1} tokens: the last exchange alone needs "
        f"{len(last)} (1 too many)"
    )


def test_a_system_message_alone_too_long_is_named(tok):
    msgs = [{"role": "system", "content": "sys " * 20}]
    need = len(render_conversation(tok, msgs)[0])
    with pytest.raises(LmlabError) as err:
        render_conversation(tok, msgs, max_tokens=need - 2)
    assert str(err.value) == (
        f"conversation does not fit in {need - 2} tokens: the system message alone needs "
        f"{need} (2 too many)"
    )


def test_completion_prompt_trains_nothing_after_the_history(tok):
    r = render_for_completion_info(tok, CONVO)
    assert len(r.loss_mask) == len(r.ids) and r.loss_mask[-1] == 0
    assert sum(r.loss_mask) == len(tok.encode("Four.")) + 1  # the earlier answer and its eot
    with pytest.raises(LmlabError) as err:
        render_for_completion(tok, CONVO[:1])
    assert str(err.value) == "nothing to answer: the conversation must end with a user message"


def test_parse_accepts_ids_without_bos_and_nothing(tok):
    ids, _ = render_conversation(tok, CONVO)
    assert ids[0] == tok.bos_id and parse_conversation(tok, ids[1:]) == CONVO
    assert parse_conversation(tok, []) == []
    assert parse_conversation(tok, [tok.bos_id]) == []


def test_a_tokenizer_with_its_own_template_is_deferred_to(tok):
    calls = []

    class Templated:
        def render_conversation_info(self, messages, max_tokens):
            calls.append(("conversation", messages, max_tokens))
            return Rendered([1, 2], [0, 1], 0)

        def render_for_completion_info(self, messages, max_tokens):
            calls.append(("completion", messages, max_tokens))
            return Rendered([3], [0], 1)

    own = Templated()
    assert render_conversation(own, CONVO, max_tokens=50) == ([1, 2], [0, 1])
    assert render_for_completion(own, CONVO[:2], max_tokens=40) == [3]
    assert calls == [("conversation", CONVO, 50), ("completion", CONVO[:2], 40)]


def test_fit_for_reply_drops_turns_then_shrinks_the_reply_cap(tok):
    from lmlab.text.chat import MIN_REPLY, fit_for_reply

    msgs = long_convo(4)[:-1]  # ends with a user message
    prompt = render_for_completion(tok, msgs)
    ids, cap = fit_for_reply(tok, msgs, context=len(prompt) + 30, max_new_tokens=30)
    assert (ids, cap) == (prompt, 30)  # everything fits
    last = render_for_completion(tok, [msgs[0], msgs[-1]])
    ids, cap = fit_for_reply(tok, msgs, context=len(last) + 30, max_new_tokens=30)
    assert (ids, cap) == (last, 30)  # older turns dropped, full cap
    ids, cap = fit_for_reply(tok, msgs, context=len(last) + 20, max_new_tokens=30)
    assert (ids, cap) == (last, 20)  # the cap shrinks instead
    with pytest.raises(LmlabError, match=r"needs \d+ \(\d+ too many\)"):
        fit_for_reply(tok, msgs, context=len(last) + MIN_REPLY - 1, max_new_tokens=30)
    ids, cap = fit_for_reply(tok, msgs, context=len(last) + 5, max_new_tokens=5)
    assert (ids, cap) == (last, 5)  # a cap below MIN_REPLY is the floor itself
    # the full cap is tried first: it drops a turn that the shrunk cap would have kept
    ids, cap = fit_for_reply(tok, msgs, context=len(prompt) + 20, max_new_tokens=30)
    assert len(ids) < len(prompt) and cap == 30
