"""lmlab.data.sources: the real `datasets.load_dataset` streaming loaders, on local files in
each corpus's Hub schema; and the clear failure when a corpus is not there."""

import http.server
import json
import socket
import threading
import time

import pytest

from lmlab.data import hub, sources
from lmlab.data.sources import SourceUnavailable
from tests.fixtures.hub_files import oasst_rows, wikitext_rows, write_jsonl, write_parquet

FINEWEB_DOCS = [f"Lesson {i}: water boils at one hundred degrees." for i in range(40)]
DOLLY_ROWS = [
    {
        "instruction": f"Name a colour number {i}.",
        "context": "Colours are nice." if i % 2 else "",
        "response": f"Blue is colour {i}.",
        "category": "open_qa",
    }
    for i in range(4)
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test reaches the network or writes into the user's Hugging Face cache."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))


def test_fineweb_streams_through_a_seeded_shuffle_buffer(tmp_path):
    # jsonl here: datasets sleeps 5 s after a shuffled parquet stream (apache/arrow#45214)
    path = write_jsonl(tmp_path / "fw" / "a.jsonl", [{"text": d} for d in FINEWEB_DOCS])
    a = list(sources.fineweb_edu_texts(path.parent, seed=1, shuffle_buffer=16))
    b = list(sources.fineweb_edu_texts(path.parent, seed=1, shuffle_buffer=16))
    c = list(sources.fineweb_edu_texts(path.parent, seed=2, shuffle_buffer=16))
    assert sorted(a) == sorted(FINEWEB_DOCS) and a == b and a != c


def test_fineweb_accepts_parquet_jsonl_and_plain_text(tmp_path):
    pq_path = write_parquet(tmp_path / "fw.parquet", [{"text": d, "id": 1} for d in FINEWEB_DOCS])
    assert list(sources.fineweb_edu_texts(pq_path, shuffle_buffer=0)) == FINEWEB_DOCS
    jl = write_jsonl(tmp_path / "fw.jsonl", [{"text": d} for d in FINEWEB_DOCS[:3]])
    assert list(sources.fineweb_edu_texts(jl, shuffle_buffer=0)) == FINEWEB_DOCS[:3]
    txt = tmp_path / "fw.txt"
    txt.write_text("one line\nanother line\n")
    assert list(sources.fineweb_edu_texts(txt, shuffle_buffer=0)) == ["one line", "another line"]


def test_wikitext_lines_become_articles_and_its_validation_file_is_the_val_split(tmp_path):
    wiki = tmp_path / "wiki"
    write_parquet(wiki / "train-00000.parquet", wikitext_rows(4, "tr"))
    write_parquet(wiki / "validation-00000.parquet", wikitext_rows(2, "va"))
    write_parquet(wiki / "test-00000.parquet", wikitext_rows(2, "te"))
    train = list(sources.wikitext_documents("train", wiki))
    val = list(sources.wikitext_documents("validation", wiki))
    assert len(train) == 4 and len(val) == 2
    # a " = = Section = = " heading stays inside its article; a " = Title = " starts a new one
    assert train[0].startswith("= tr article 0 =") and "= = History = =" in train[0]
    assert all("te article" not in d for d in train + val)  # test files are ignored


def test_wikitext_without_validation_files_has_no_val_split(tmp_path):
    path = write_jsonl(tmp_path / "wiki.jsonl", wikitext_rows(2, "x"))
    assert list(sources.wikitext_documents("validation", path)) == []
    assert len(list(sources.wikitext_documents("train", path))) == 2


def test_dolly_rows_are_user_assistant_exchanges(tmp_path):
    path = write_jsonl(tmp_path / "dolly.jsonl", DOLLY_ROWS[:2])
    convs = list(sources.dolly_conversations(path))
    assert convs[0] == [
        {"role": "user", "content": "Name a colour number 0."},
        {"role": "assistant", "content": "Blue is colour 0."},
    ]
    assert convs[1][0]["content"] == "Name a colour number 1.\n\nColours are nice."


def test_oasst1_trees_become_threads(tmp_path):
    path = write_parquet(tmp_path / "oasst" / "train.parquet", oasst_rows(1, "t"))
    threads = list(sources.oasst1_threads("train", path.parent))
    assert [[m["content"] for m in t] for t in threads] == [
        ["Question t0?", "Best answer t0.", "Follow-up t0?", "Follow-up answer t0."],
        ["Question t0?", "Other answer t0."],
    ]
    assert all(t[0]["role"] == "user" and t[-1]["role"] == "assistant" for t in threads)
    every_lang = list(sources.oasst1_threads("train", path.parent, lang=None))
    assert len(every_lang) == 3 and ["Wie geht es?", "Gut."] in [
        [m["content"] for m in t] for t in every_lang
    ]


def test_oasst1_thread_ending_on_a_prompt_is_cut_after_the_last_answer(tmp_path):
    rows = [
        {"message_id": "q", "parent_id": None, "text": "Q?", "role": "prompter", "lang": "en"},
        {"message_id": "a", "parent_id": "q", "text": "A.", "role": "assistant", "lang": "en"},
        {"message_id": "f", "parent_id": "a", "text": "And?", "role": "prompter", "lang": "en"},
    ]
    path = write_jsonl(tmp_path / "o.jsonl", rows)
    assert list(sources.oasst1_threads("train", path)) == [
        [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    ]


def test_take_tokens_stops_at_the_budget():
    texts = [f"w{i} " * 10 for i in range(100)]

    def encode(batch):
        return [t.split() for t in batch]

    got = list(sources.take_tokens(iter(texts), encode, budget=35, batch=8))
    assert [len(ids) for _, ids in got] == [10, 10, 10, 10]  # the crossing document is whole
    assert len(list(sources.take_tokens(iter(texts), encode, budget=None))) == 100
    assert list(sources.take_tokens(iter(["", "  "]), encode, budget=None)) == []


def test_within_budget_counts_what_an_item_costs_and_pulls_nothing_beyond():
    pulled = []

    def docs():
        for n in (3, 3, 3, 3):
            pulled.append(n)
            yield [0] * n, [1] * n  # (ids, mask) documents; each costs its ids plus a bos

    got = list(sources.within_budget(docs(), 8, tokens=lambda doc: len(doc[0]) + 1))
    assert len(got) == 2 and pulled == [3, 3]
    assert list(sources.within_budget(docs(), 0)) == []


def test_stable_fraction_is_a_pure_function_of_seed_and_key():
    assert sources.stable_fraction("a", 1) == sources.stable_fraction("a", 1)
    assert sources.stable_fraction("a", 1) != sources.stable_fraction("a", 2)
    values = [sources.stable_fraction(str(i)) for i in range(2000)]
    assert 0 <= min(values) and max(values) < 1 and 0.45 < sum(values) / 2000 < 0.55


@pytest.mark.parametrize(
    ("key", "flag"),
    [
        ("fineweb_edu", "--fineweb-path"),
        ("wikitext", "--wikitext-path"),
        ("dolly15k", "--dolly-path"),
        ("oasst1", "--oasst-path"),
    ],
)
def test_offline_without_a_local_copy_is_a_quick_clear_error(key, flag):
    loaders = {
        "fineweb_edu": lambda: sources.fineweb_edu_texts(),
        "wikitext": lambda: sources.wikitext_documents("train"),
        "dolly15k": lambda: sources.dolly_conversations(),
        "oasst1": lambda: sources.oasst1_threads("train"),
    }
    started = time.perf_counter()
    with pytest.raises(SourceUnavailable) as e:
        next(iter(loaders[key]()))
    assert time.perf_counter() - started < 5
    msg = str(e.value)
    assert "offline" in msg and flag in msg and sources.HUB[key].path in msg


def test_unreachable_hub_is_a_clear_error_not_a_hang(monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=None: False)
    with pytest.raises(SourceUnavailable, match="not reachable.*--dolly-path"):
        next(iter(sources.dolly_conversations()))


def test_the_hub_probe_gives_up_within_its_timeout(monkeypatch):
    # a loopback listener that never accepts nor answers: the connection opens, no reply comes
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        hub._PROBED.clear()
        started = time.perf_counter()
        assert hub.hub_reachable(timeout=0.5) is False
        assert time.perf_counter() - started < 3
        started = time.perf_counter()
        assert hub.hub_reachable(timeout=0.5) is False  # remembered: not asked again
        assert time.perf_counter() - started < 0.1


def test_the_hub_probe_reports_a_refused_connection_and_a_live_hub(monkeypatch):
    with socket.socket() as closed:  # bound, not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
        hub._PROBED.clear()
        assert hub.hub_reachable(timeout=2) is False

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}/")
        assert hub.hub_reachable(timeout=2) is True
    finally:
        server.shutdown()
        server.server_close()
        hub._PROBED.clear()


def test_bad_local_copies_name_what_is_wrong(tmp_path):
    with pytest.raises(SourceUnavailable, match="does not exist.*--dolly-path"):
        next(iter(sources.dolly_conversations(tmp_path / "nope.jsonl")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceUnavailable, match="no .* files in"):
        next(iter(sources.dolly_conversations(tmp_path / "empty")))
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"prompt": "x", "answer": "y"}])
    with pytest.raises(SourceUnavailable, match="lacks the column.*instruction"):
        next(iter(sources.dolly_conversations(wrong)))
    mixed = tmp_path / "mixed"
    write_jsonl(mixed / "a.jsonl", [{"text": "a"}])
    write_parquet(mixed / "b.parquet", [{"text": "b"}])
    with pytest.raises(SourceUnavailable, match="mixes file kinds"):
        next(iter(sources.fineweb_edu_texts(mixed)))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a", "context": "", "response": "b"}\n{"instruction": \n')
    with pytest.raises(SourceUnavailable, match="dolly15k: reading .*broken.jsonl failed"):
        list(sources.dolly_conversations(broken))
    txt = tmp_path / "d.txt"
    txt.write_text("x\n")
    with pytest.raises(SourceUnavailable, match="no .* files"):  # text files do not fit dolly
        next(iter(sources.dolly_conversations(txt)))


def test_local_loading_writes_no_arrow_cache(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", DOLLY_ROWS[:3])
    assert len(list(sources.dolly_conversations(path))) == 3
    cache = tmp_path / "hf" / "datasets"
    assert not cache.exists() or not any(p.suffix == ".arrow" for p in cache.rglob("*"))
    json.dumps(sources.HUB["dolly15k"].columns)  # the schema table is plain data
