"""The listwise loss, the false-negative filter and the FIFO queue, against hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lmlab.studies.distill  # noqa: F401  (registers the recipe)
from lmlab.errors import LmlabError
from lmlab.studies.distill.config import DistillArgs
from lmlab.studies.distill.loss import (
    FeatureQueue,
    candidate_mask,
    distill_loss,
    false_negative_mask,
    listwise_kl,
)

# four unit items in 2-D: cos(e0,e1)=0.8, cos(e0,e2)=0, cos(e0,e3)=-0.6
ITEMS = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])


class Stretch(nn.Module):
    """A fixed student: normalise(diag(1, 2) x), with the loss's queue."""

    def __init__(self, queue_size=4):
        super().__init__()
        self.queue = FeatureQueue(queue_size, 2)

    def forward(self, x):
        return F.normalize(x * torch.tensor([1.0, 2.0]), dim=-1)


def kl(p_logits, q_logits):
    zp = sum(math.exp(v) for v in p_logits)
    zq = sum(math.exp(v) for v in q_logits)
    p = [math.exp(v) / zp for v in p_logits]
    q = [math.exp(v) / zq for v in q_logits]
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def test_loss_equals_hand_computed_value_on_four_items():
    tau = 0.5
    args = DistillArgs(
        teacher_npy="x.npy", k=2, neg_m=2, queue_size=4, tau=tau, false_neg_mode="none"
    )
    model = Stretch()
    # queue: item 3 (stale student embedding (0, 1)) and item 1 (a positive of anchor 0: masked)
    model.queue.enqueue(torch.tensor([3, 1]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    knn_idx = torch.tensor([[1, 2], [0, 2], [1, 3], [2, 1]])
    knn_sim = ITEMS[knn_idx].mul(ITEMS[:, None, :]).sum(-1)
    batch = {"anchors": torch.tensor([0]), "neg_slots": torch.tensor([0, 1])}
    loss, metrics = distill_loss(model, batch, ITEMS, knn_idx, knn_sim, args)
    # by hand: student z0=(1,0), z1=(0.8,1.2)/|.|, z2=(0,1); candidates: pos 1, pos 2, neg 3
    s1 = 0.8 / math.hypot(0.8, 1.2)
    teacher = [0.8 / tau, 0.0 / tau, -0.6 / tau]
    student = [s1 / tau, 0.0 / tau, 0.0 / tau]  # z0 . stale(3) = (1,0).(0,1) = 0
    assert loss.item() == pytest.approx(kl(teacher, student), abs=1e-6)
    assert metrics["masked_frac"] == 0.5  # item 1 among the two negatives
    assert model.queue.ordered_ids() == [3, 1, 0]  # the anchor joins the queue after its loss


def test_masked_entries_equal_dropping_them_and_gradients_stay_finite():
    t = torch.tensor([[0.9, 0.5, 0.1, 0.7]])
    s = torch.tensor([[0.2, 0.4, 0.3, 0.9]], requires_grad=True)
    mask = torch.tensor([[False, False, False, True]])
    masked = listwise_kl(t, s, mask, 0.1)
    dropped = listwise_kl(t[:, :3], s[:, :3], torch.zeros(1, 3, dtype=torch.bool), 0.1)
    assert masked.item() == pytest.approx(dropped.item(), abs=1e-6)
    masked.backward()
    assert torch.isfinite(s.grad).all() and s.grad[0, 3] == 0


def test_threshold_filter_masks_exactly_the_negatives_above_it():
    torch.manual_seed(0)
    t = torch.rand(5, 40) * 2 - 1
    mask = false_negative_mask(t, "threshold", threshold=0.3)
    assert torch.equal(mask, t > 0.3)
    assert not false_negative_mask(t, "none").any()
    top = false_negative_mask(t, "top_percent", top_percent=10)
    assert (top.sum(1) == 4).all()  # ceil(10% of 40)
    for row in range(5):  # and they are each row's 4 largest
        assert set(top[row].nonzero().flatten().tolist()) == set(t[row].topk(4).indices.tolist())


def test_candidate_mask_keeps_positives_and_shape():
    anchors = torch.tensor([0, 1])
    positives = torch.tensor([[5, 6], [7, 8]])
    neg_ids = torch.tensor([0, 6, 9, 1])
    teacher_neg = torch.tensor([[0.1, 0.2, 0.95, 0.1], [0.1, 0.1, 0.1, 0.3]])
    mask = candidate_mask(anchors, positives, neg_ids, teacher_neg, "threshold", 0.8, 1.0)
    assert mask.shape == (2, 2 + 4)
    assert not mask[:, :2].any()  # positives never masked
    # row 0: item 0 is the anchor, 6 a positive, 9 above the threshold; row 1: item 1 the anchor
    assert mask[0, 2:].tolist() == [True, True, True, False]
    assert mask[1, 2:].tolist() == [False, False, False, True]


def test_unknown_filter_mode_is_an_error():
    with pytest.raises(LmlabError, match="unknown false-negative filter 'hard'"):
        false_negative_mask(torch.zeros(1, 3), "hard")


def test_queue_is_fifo_and_never_holds_the_anchor_as_its_negative():
    q = FeatureQueue(4, 2)
    q.enqueue(torch.tensor([1, 2, 3]), torch.arange(6.0).reshape(3, 2))
    q.enqueue(torch.tensor([4, 5]), torch.arange(6.0, 10.0).reshape(2, 2))
    assert q.ordered_ids() == [2, 3, 4, 5]  # the oldest (1) went first
    assert len(q) == 4
    ids, emb = q.take(torch.arange(4))
    assert {int(i): e.tolist() for i, e in zip(ids, emb, strict=True)}[5] == [8.0, 9.0]
    # a queue holding the anchor gives the same loss as one without it: it is never a negative
    args = DistillArgs(
        teacher_npy="x.npy", k=1, neg_m=2, queue_size=4, tau=0.2, false_neg_mode="none"
    )
    knn_idx = torch.tensor([[1], [0], [1], [2]])
    knn_sim = (ITEMS[knn_idx[:, 0]] * ITEMS).sum(-1, keepdim=True)
    batch = {"anchors": torch.tensor([2]), "neg_slots": torch.tensor([0, 1])}
    with_anchor, without = Stretch(), Stretch()
    with_anchor.queue.enqueue(torch.tensor([3, 2]), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    without.queue.enqueue(torch.tensor([3]), torch.tensor([[0.0, 1.0]]))
    batch_without = {"anchors": torch.tensor([2]), "neg_slots": torch.tensor([0])}
    a, _ = distill_loss(with_anchor, batch, ITEMS, knn_idx, knn_sim, args)
    b, _ = distill_loss(without, batch_without, ITEMS, knn_idx, knn_sim, args)
    assert a.item() == pytest.approx(b.item(), abs=1e-7)
