"""What GRPO needs from the core: the log-prob of the stop token that ended a sample (the choice
to stop is part of the completion) and the entropy of each position's distribution."""

import math

import pytest
import torch

from lmlab.model import Engine, GenerationConfig
from lmlab.model.engine import Request
from lmlab.model.logprobs import token_entropy
from tests.model.tiny import prompts, tiny_model


def test_a_stopped_sample_carries_its_stop_tokens_logprob():
    engine = Engine(tiny_model())
    prompt = prompts(9, seed=3)[0]
    stops = tuple(range(8))  # an eighth of the vocabulary stops: some samples stop, some not
    cfg = GenerationConfig(
        max_new_tokens=6, temperature=1.0, seed=2, num_samples=12, stop_tokens=stops, logprobs=0
    )
    (result,) = engine.run([Request(prompt, cfg)])
    stopped = [g for g in result.samples if g.finish_reason == "stop"]
    assert stopped and any(g.finish_reason == "length" for g in result.samples)
    for g in result.samples:
        if g.finish_reason == "length":
            assert g.stop_logprob is None
            continue
        with torch.no_grad():
            ref = engine.model(torch.tensor([prompt + g.tokens])).log_softmax(-1)[0, -1]
        assert g.stop_logprob == pytest.approx(ref[g.stop_token].item(), abs=1e-4)
    off = GenerationConfig(**{**cfg.__dict__, "logprobs": None})
    assert all(g.stop_logprob is None for g in engine.run([Request(prompt, off)])[0].samples)


def test_token_entropy_of_uniform_and_peaked_distributions():
    logits = torch.zeros(2, 3, 8)
    logits[1, :, 0] = 100.0  # all mass on one token
    ent = token_entropy(logits)
    assert ent[0].tolist() == pytest.approx([math.log(8)] * 3)
    assert ent[1].tolist() == pytest.approx([0.0] * 3, abs=1e-6)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    assert token_entropy(logits, mask)[0].tolist() == pytest.approx([math.log(8), 0, math.log(8)])
