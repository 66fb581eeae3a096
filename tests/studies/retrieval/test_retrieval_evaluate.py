"""Retrieval eval: samples land in the right length and position buckets, and a prompt longer
than the checkpoint's context is a clear error (the trained test model scores ~0%, so these are
checked on a made-up results table and a stand-in tokenizer)."""

import polars as pl
import pytest

from lmlab.errors import LmlabError
from lmlab.studies.retrieval.evaluate import flat_metrics, predict, summarize
from tests.model.tiny import tiny_model


def results_table():
    """Correct exactly for short contexts (<= 16 pairs) and for keys at the back."""
    rows = []
    for n in (4, 16, 17, 40, 64, 65, 100, 128, 129, 300):
        for pos in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
            rows.append({"num_pairs": n, "query_position": pos, "correct": n <= 16 or pos > 0.75})
    return pl.DataFrame(rows)


def test_every_sample_lands_in_its_length_and_position_bucket():
    s = summarize(results_table())
    assert s["overall"]["n"] == 70
    by_len = {k: (v["n"], v["correct"]) for k, v in s["by_length"].items()}
    # <=16: 2 lengths x 7 positions, all right; others: only the 2 back positions are right
    assert by_len == {"<=16": (14, 14), "17-64": (21, 6), "65-128": (21, 6), ">128": (14, 4)}
    by_pos = {k: (v["n"], v["correct"]) for k, v in s["by_position"].items()}
    # front < 0.25 (0.0, 0.1); back > 0.75 (0.9, 1.0); middle the rest (0.25, 0.5, 0.75)
    assert by_pos == {"front": (20, 4), "middle": (30, 6), "back": (20, 20)}
    assert s["by_length"]["<=16"]["accuracy"] == 1.0 and s["by_position"]["back"]["ci95"][1] == 1.0
    flat = flat_metrics(s)
    assert flat["acc_len_le16"] == 1.0 and flat["acc_pos_back"] == 1.0
    assert flat["acc_len_gt128"] == pytest.approx(4 / 14)


def test_an_empty_bucket_has_no_accuracy():
    s = summarize(pl.DataFrame([{"num_pairs": 3, "query_position": 0.0, "correct": True}]))
    assert s["by_length"][">128"] == {"accuracy": None, "ci95": None, "n": 0, "correct": 0}


class Letters:
    """A tokenizer stand-in: one id per character."""

    bos_id, eot_id = 0, 1

    def encode(self, text):
        return [2 + ord(c) % 60 for c in text]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids, skip_special=False):
        return "".join(chr(ord("a") + i % 26) for i in ids)


def test_prompts_longer_than_the_context_are_refused_with_the_numbers():
    model = tiny_model()  # context 96
    prompts = ["k" * 10, "k" * 90]  # 91 tokens with bos, + 8 generated = 99
    with pytest.raises(LmlabError) as err:
        predict(model, Letters(), prompts, batch_size=2, max_new=8)
    assert str(err.value) == (
        "eval prompts need up to 99 tokens (8 generated) but the checkpoint's context is 96: "
        "over by 3; train with model.seq_len >= 99"
    )
    words = predict(model, Letters(), ["k" * 10, "k" * 80], batch_size=1, max_new=8)
    assert len(words) == 2 and all(" " not in w for w in words)
