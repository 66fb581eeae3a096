"""The synthetic preference set's structure, and the demo's pipeline at toy size."""

import json

import numpy as np
import pytest
import torch

from lmlab.studies.preference.synthetic import TOPICS, SyntheticSpec, generate, vocabulary


def test_synthetic_set_has_the_promised_structure():
    spec = SyntheticSpec(common_prompts=50, rare_prompts=6, test_prompts=10, seed=3)
    train, test = generate(spec)
    assert generate(spec) == (train, test)  # deterministic
    n_common = sum(t.kind == "common" for t in TOPICS)
    n_rare = len(TOPICS) - n_common
    assert len(train) == 50 * n_common + 6 * n_rare and len(test) == 10 * len(TOPICS)
    prompts = lambda ps: {p["prefix"]["messages"][0]["content"] for p in ps}  # noqa: E731
    assert not prompts(train) & prompts(test) and len(prompts(train)) == len(train)
    by_topic = {t.name: t for t in TOPICS}
    for p in train + test:
        t = by_topic[p["topic"]]
        assert t.preferred in p["chosen"].split() and t.other in p["rejected"].split()
    words = set(vocabulary())
    assert all(set(p["chosen"].split()) <= words for p in train)
    # a reversed rare topic prefers exactly what some common topic rejects
    common_rules = {(t.preferred, t.other) for t in TOPICS if t.kind == "common"}
    assert all((t.other, t.preferred) in common_rules for t in TOPICS if t.rule == "reversed")


def test_demo_pipeline_at_toy_size_writes_its_report(tmp_path):
    from lmlab.studies.preference.demo import ARMS, run_demo

    torch.set_num_threads(1)

    def embed(texts):  # a stand-in for MiniLM: one direction per topic's first noun word
        out = np.random.default_rng(0).standard_normal((len(texts), 16)).astype(np.float32) * 0.1
        for i, t in enumerate(texts):
            out[i, hash(t.split()[-1]) % 16] += 1
        return out

    spec = SyntheticSpec(common_prompts=12, rare_prompts=3, test_prompts=2)
    report = run_demo(
        tmp_path, seeds=(0,), steps=2, k=3, echo=lambda _: None, spec=spec, embed_fn=embed
    )
    text = report.read_text()
    assert "## Held-out accuracy" in text and "| rare | 10 |" in text and "Seen or learnt" in text
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["accuracy"]) == set(ARMS)
    assert res["weights"]["rare"]["share_oracle"] == pytest.approx(5 / 8)
    assert (tmp_path / "viz" / "embeddings_3d.html").exists()
