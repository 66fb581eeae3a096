"""The chunked output layer + cap + cross-entropy equals the plain computation, value and grads."""

import pytest
import torch
import torch.nn.functional as F

from lmlab.model.config import ModelConfig
from lmlab.model.gpt import GPT
from lmlab.model.loss import linear_cross_entropy


def plain(h, w, t, cap, reduction):
    logits = F.linear(h, w).float()
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    loss = F.cross_entropy(logits.view(-1, w.shape[0]), t.reshape(-1), ignore_index=-1,
                           reduction=reduction)  # fmt: skip
    return loss.view(t.shape) if reduction == "none" else loss


@pytest.mark.parametrize("cap", [None, 15.0, 2.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk", [3, 7, 1000])
def test_value_and_gradients_match_the_plain_computation(cap, reduction, chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 9, 16, generator=g, dtype=torch.float64) * 3
    w = torch.randn(40, 16, generator=g, dtype=torch.float64)
    t = torch.randint(0, 40, (2, 9), generator=g)
    t[0, 2] = t[1, 8] = -1  # rows without a target
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_()
    ours = linear_cross_entropy(h1, w1, t, cap, reduction=reduction, chunk=chunk)
    ref = plain(h2, w2, t, cap, reduction)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours.double(), ref.double(), rtol=1e-5, atol=1e-6)
    weights = torch.randn(ref.shape, generator=g, dtype=torch.float64) if ref.dim() else 2.5
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_without_gradients_it_is_the_same_loss(reduction):
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(50, 8, generator=g), torch.randn(30, 8, generator=g)
    t = torch.randint(0, 30, (50,), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(
            linear_cross_entropy(h, w, t, 15.0, reduction=reduction, chunk=16),
            plain(h, w, t, 15.0, reduction),
        )


def test_gpt_loss_and_gradients_equal_the_logits_path():
    cfg = ModelConfig(depth=2, n_embd=32, n_head=2, vocab_size=64, seq_len=16, lm_head_init_std=0.5)
    torch.manual_seed(0)
    a, b = GPT(cfg), GPT(cfg)
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 64, (3, 12))
    y = torch.randint(0, 64, (3, 12))
    y[1, :4] = -1
    a(ids, y).backward()
    logits = b(ids)  # the plain path: logits (capped), then cross-entropy
    F.cross_entropy(logits.view(-1, 64), y.view(-1), ignore_index=-1).backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_backbone_refuses_targets():
    cfg = ModelConfig(depth=1, n_embd=16, n_head=1, vocab_size=8, seq_len=8)
    with pytest.raises(Exception, match="without a language-model head"):
        GPT(cfg, with_lm_head=False)(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4).long())


def test_bad_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(2).long(),
                             reduction="max")  # fmt: skip
