"""The demo's policy stage at toy size: SFT start -> DPO uniform vs density-aware -> report, and
the rule-based judge of answers."""

import json

import numpy as np
import torch

from lmlab.studies.preference.synthetic import TOPICS, SyntheticSpec


def test_marker_score_follows_the_topics_rule():
    from lmlab.studies.preference.policy_demo import marker_score

    cooking = next(t for t in TOPICS if t.name == "cooking")  # red over blue
    assert marker_score("well red works", cooking) == 1.0
    assert marker_score("blue it is", cooking) == 0.0
    assert marker_score("days days", cooking) == 0.5 == marker_score("red or blue", cooking)


def test_policy_stage_at_toy_size_writes_its_report(tmp_path):
    from lmlab.studies.preference.demo import prepare_data
    from lmlab.studies.preference.policy_demo import run_policy_stage

    torch.set_num_threads(1)

    def embed(texts):  # a stand-in for MiniLM: one direction per topic's last word
        out = np.random.default_rng(0).standard_normal((len(texts), 16)).astype(np.float32) * 0.1
        for i, t in enumerate(texts):
            out[i, hash(t.split()[-1]) % 16] += 1
        return out

    spec = SyntheticSpec(common_prompts=12, rare_prompts=3, test_prompts=2)
    prepare_data(tmp_path, 3, 1e-3, lambda _: None, spec, embed)
    res = run_policy_stage(tmp_path, echo=lambda _: None, sft_steps=2, dpo_steps=2)
    assert set(res["answers"]) == {"sft", "dpo-uniform", "dpo-density"}
    assert res["implicit"]["dpo-uniform"]["rare"]["n"] == 10  # 5 rare topics x 2 test prompts
    text = (tmp_path / "policy_report.md").read_text()
    assert "implicit-reward accuracy" in text and "| rare-reversed | 6 |" in text
    cfg = json.loads((tmp_path / "runs" / "dpo-density" / "checkpoints" / "latest" / "meta.json").read_text())  # fmt: skip
    assert cfg["train_config"]["recipe_args"]["density_aware"] is True
    assert cfg["train_config"]["init_from"].endswith("sft")
