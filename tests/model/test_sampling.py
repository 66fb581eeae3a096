"""Sampling on distributions whose answer is known: what top-p, top-k, temperature and bans keep,
and how often each token is drawn (fixed seeds, tolerances of several standard errors)."""

import math

import pytest
import torch

from lmlab.model.sampling import filter_logits, sample_next

PROBS = [0.5, 0.3, 0.15, 0.05]


def logits_of(*rows):
    return torch.tensor([[math.log(p) for p in row] for row in rows])


def kept(logits):
    """Indices that may still be drawn, per row."""
    return [torch.isfinite(row).nonzero().flatten().tolist() for row in logits]


def frequencies(logits, n=4000, seed=0, **opts):
    gen = torch.Generator().manual_seed(seed)
    rows = logits.expand(n, -1)
    draws = sample_next(rows, [gen] * n, **opts)
    return torch.bincount(draws, minlength=logits.shape[-1]).double() / n


def assert_frequencies(freq, probs, n=4000):
    probs = torch.tensor(probs, dtype=torch.float64)
    se = (probs * (1 - probs) / n).sqrt().clamp(min=1e-3)
    assert ((freq - probs).abs() <= 4 * se).all(), (freq.tolist(), probs.tolist())


@pytest.mark.parametrize(
    ("top_p", "expect"),
    [(0.9, [0, 1, 2]), (0.81, [0, 1, 2]), (0.79, [0, 1]), (0.3, [0]), (1.0, [0, 1, 2, 3])],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, expect):
    out = filter_logits(logits_of(PROBS), temperature=1.0, top_p=top_p)
    assert kept(out) == [expect]


def test_top_p_works_on_unsorted_rows_independently():
    shuffled = [PROBS[2], PROBS[0], PROBS[3], PROBS[1]]
    out = filter_logits(logits_of(shuffled, PROBS), temperature=1.0, top_p=0.9)
    assert kept(out) == [[0, 1, 3], [0, 1, 2]]


@pytest.mark.parametrize(
    ("top_k", "expect"),
    [
        (1, [0]),
        (2, [0, 1]),
        (3, [0, 1, 2]),
        (4, [0, 1, 2, 3]),
        (9, [0, 1, 2, 3]),
        (0, [0, 1, 2, 3]),
    ],
)
def test_top_k_keeps_k(top_k, expect):
    out = filter_logits(logits_of(PROBS), temperature=1.0, top_k=top_k)
    assert kept(out) == [expect]


def test_kept_logits_are_unchanged_and_the_input_is_not_modified():
    logits = logits_of(PROBS)
    before = logits.clone()
    out = filter_logits(logits, temperature=1.0, top_k=2)
    assert torch.equal(logits, before)
    assert torch.equal(out[0, :2], before[0, :2])


def test_top_k_comes_before_top_p():
    # top-2 renormalises [.4, .3] to [.57, .43]: top_p .5 then keeps one token (two if top-p
    # were applied to the full distribution first)
    out = filter_logits(logits_of([0.4, 0.3, 0.2, 0.1]), temperature=1.0, top_k=2, top_p=0.5)
    assert kept(out) == [[0]]


def test_temperature_scales_before_top_p():
    # at T = 2 the distribution is flatter ([.38, .29, .21, .12]): top_p .9 needs all four
    out = filter_logits(logits_of(PROBS), temperature=2.0, top_p=0.9)
    assert kept(out) == [[0, 1, 2, 3]]
    torch.testing.assert_close(out, logits_of(PROBS) / 2.0)


def test_banned_tokens_are_never_drawn_and_greedy_takes_the_next_best():
    logits = logits_of(PROBS, PROBS)
    greedy = sample_next(logits, [torch.Generator()] * 2, temperature=0.0, banned=[0, 2])
    assert greedy.tolist() == [1, 1]
    freq = frequencies(logits_of(PROBS), temperature=1.0, banned=[1])
    assert freq[1] == 0
    assert_frequencies(freq, [0.5 / 0.7, 0, 0.15 / 0.7, 0.05 / 0.7])


def test_greedy_ignores_top_k_and_top_p_and_takes_the_argmax():
    logits = logits_of(PROBS[::-1], PROBS)
    out = sample_next(logits, [torch.Generator()] * 2, temperature=0.0, top_k=3, top_p=0.5)
    assert out.tolist() == [3, 0]


def test_sampling_frequencies_follow_the_distribution():
    assert_frequencies(frequencies(logits_of(PROBS), temperature=1.0), PROBS)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_changes_the_frequencies(temperature):
    scaled = torch.tensor(PROBS) ** (1 / temperature)
    expect = (scaled / scaled.sum()).tolist()
    freq = frequencies(logits_of(PROBS), temperature=temperature)
    assert_frequencies(freq, expect)
    # and these are not the T = 1 frequencies
    assert (freq - torch.tensor(PROBS, dtype=torch.float64)).abs().max() > 0.05


def test_top_p_and_top_k_frequencies_are_renormalised():
    assert_frequencies(
        frequencies(logits_of(PROBS), temperature=1.0, top_p=0.9),
        [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0],
    )
    assert_frequencies(
        frequencies(logits_of(PROBS), temperature=1.0, top_k=2), [0.625, 0.375, 0, 0]
    )


def test_each_row_draws_from_its_own_generator():
    logits = logits_of(PROBS, PROBS, PROBS)

    def draw(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return [sample_next(logits, gens, temperature=1.0).tolist() for _ in range(30)]

    a, b = draw([1, 2, 3]), draw([1, 9, 3])
    col = lambda rows, i: [r[i] for r in rows]  # noqa: E731
    assert col(a, 0) == col(b, 0) and col(a, 2) == col(b, 2) and col(a, 1) != col(b, 1)


def test_top_p_one_keeps_even_a_vanishing_token():
    # float32 mass before the last token is exactly 1.0 here: top_p = 1 must not drop it
    logits = torch.tensor([[0.0, -30.0]])
    assert kept(filter_logits(logits, temperature=1.0, top_p=1.0)) == [[0, 1]]


def test_top_p_drops_a_token_once_the_mass_before_it_reaches_p():
    logits = torch.zeros(1, 2)  # two tokens of exactly 0.5
    assert kept(filter_logits(logits, temperature=1.0, top_p=0.5)) == [[0]]
    assert kept(filter_logits(logits, temperature=1.0, top_p=0.51)) == [[0, 1]]


def test_temperature_zero_is_argmax_even_for_a_flat_distribution():
    logits = logits_of(*[[0.3, 0.29, 0.21, 0.2]] * 200)
    gens = [torch.Generator().manual_seed(i) for i in range(200)]
    assert sample_next(logits, gens, temperature=0.0).tolist() == [0] * 200
