"""The listwise loss: KL(teacher ‖ student) over each anchor's K teacher neighbours plus M
negatives from a FIFO queue of the student's own past embeddings (MoCo-style). With
`refresh_negatives` (the default for the GPT student) the drawn negatives are re-embedded by the
current student instead: stale ones let a GPT collapse (see distill_loss).

Every excluded candidate is masked with -inf in both distributions; nothing is dropped from the
tensor, so a batch keeps its shape [B, K + M] whatever the filter does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError

FILTER_MODES = ("none", "threshold", "top_percent")


class FeatureQueue(nn.Module):
    """FIFO ring of (item id, student embedding) of past anchors; the teacher vector of an entry
    is the teacher row of its id. Buffers, so checkpoints carry it and resume is exact (as MoCo
    keeps its queue in the module)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.size = size
        self.register_buffer("emb", torch.zeros(size, dim))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def enqueue(self, ids: torch.Tensor, emb: torch.Tensor) -> None:
        """Append a batch, overwriting the oldest entries once full."""
        if self.size == 0:
            return
        ids, emb = ids[-self.size :], emb[-self.size :].detach().to(self.emb.dtype)
        slots = (self.ptr + torch.arange(len(ids), device=ids.device)) % self.size
        self.ids[slots] = ids.to(self.ids.device)
        self.emb[slots] = emb.to(self.emb.device)
        self.ptr.fill_(int((self.ptr + len(ids)) % self.size))
        self.count.fill_(min(self.size, int(self.count) + len(ids)))

    def ordered_ids(self) -> list[int]:
        """Ids from oldest to newest."""
        n = int(self.count)
        start = int(self.ptr) - n
        return [int(self.ids[(start + i) % self.size]) for i in range(n)]

    def take(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, embeddings) at ring positions `slots`, restricted to filled positions."""
        slots = slots[slots < int(self.count)]
        return self.ids[slots], self.emb[slots]


def false_negative_mask(
    teacher_neg: torch.Tensor, mode: str, threshold: float = 0.8, top_percent: float = 1.0
) -> torch.Tensor:
    """[B, M] True where a negative is likely a true neighbour (by teacher cosine to the anchor).

    threshold: cosine > threshold. top_percent: each anchor's top ceil(p% of M) negatives.
    """
    if mode not in FILTER_MODES:
        raise LmlabError(f"unknown false-negative filter {mode!r} (use {', '.join(FILTER_MODES)})")
    if mode == "none" or teacher_neg.shape[1] == 0:
        return torch.zeros_like(teacher_neg, dtype=torch.bool)
    if mode == "threshold":
        return teacher_neg > threshold
    n = math.ceil(teacher_neg.shape[1] * top_percent / 100.0)
    mask = torch.zeros_like(teacher_neg, dtype=torch.bool)
    if n > 0:
        top = teacher_neg.topk(min(n, teacher_neg.shape[1]), dim=1).indices
        mask.scatter_(1, top, True)
    return mask


def listwise_kl(
    teacher_sim: torch.Tensor, student_sim: torch.Tensor, mask: torch.Tensor, tau: float
) -> torch.Tensor:
    """mean over anchors of KL(softmax(t/τ) ‖ softmax(s/τ)) over the unmasked candidates."""
    t = (teacher_sim.float() / tau).masked_fill(mask, -math.inf)
    s = (student_sim.float() / tau).masked_fill(mask, -math.inf)
    log_pt, log_ps = F.log_softmax(t, dim=1), F.log_softmax(s, dim=1)
    # a masked term is 0 · (-inf - -inf): select 0 there (its gradient is 0 as well)
    terms = torch.where(mask, 0.0, log_pt.exp() * (log_pt - log_ps))
    return terms.sum(dim=1).mean()


def candidate_mask(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    neg_ids: torch.Tensor,
    teacher_neg: torch.Tensor,
    mode: str,
    threshold: float,
    top_percent: float,
) -> torch.Tensor:
    """[B, K + M]: positives are never masked; a negative is masked when it is the anchor, one of
    the anchor's positives, or a false negative by the filter."""
    own = neg_ids[None, :] == anchors[:, None]
    pos = (neg_ids[None, None, :] == positives[:, :, None]).any(dim=1)
    fn = false_negative_mask(teacher_neg.masked_fill(own | pos, -2.0), mode, threshold, top_percent)
    neg_mask = own | pos | fn
    return torch.cat([torch.zeros_like(positives, dtype=torch.bool), neg_mask], dim=1)


def refresh_negatives(args) -> bool:
    """recipe_args.refresh_negatives, where None means: for the GPT student only."""
    flag = getattr(args, "refresh_negatives", None)
    return getattr(args, "student", "projection") == "gpt" if flag is None else flag


def distill_loss(model, batch: dict, teacher: torch.Tensor, knn_idx, knn_sim, args, inputs=None):
    """(loss, metrics) for a batch of anchor ids: the KL above; then the anchors join the queue.

    `model` is the student (maybe wrapped in DDP); its `.queue` is read and updated here. It
    reads the rows of `inputs` (the items' token rows for the GPT student), else of `teacher`.
    """
    from lmlab.model.registry import unwrap

    queue: FeatureQueue = unwrap(model).queue
    anchors, slots = batch["anchors"], batch["neg_slots"]
    positives = knn_idx[anchors]  # [B, K]
    b, k = positives.shape
    rows = teacher if inputs is None else inputs
    z = model(rows[torch.cat([anchors, positives.reshape(-1)])])
    z_a, z_p = z[:b], z[b:].reshape(b, k, -1)
    neg_ids, neg_emb = queue.take(slots)
    if refresh_negatives(args) and neg_ids.numel():
        # the queue's embeddings are stale; a student that can move every item at once (a GPT)
        # learns to drift away from them, all embeddings together, instead of apart: re-embed
        with torch.no_grad():
            neg_emb = unwrap(model)(rows[neg_ids])
    teacher_pos = knn_sim[anchors]
    teacher_neg = teacher[anchors] @ teacher[neg_ids].T
    student_pos = (z_a[:, None, :] * z_p).sum(-1)
    student_neg = z_a @ neg_emb.to(z_a.dtype).T
    mask = candidate_mask(
        anchors,
        positives,
        neg_ids,
        teacher_neg,
        args.false_neg_mode,
        args.false_neg_threshold,
        args.false_neg_top_percent,
    )
    loss = listwise_kl(
        torch.cat([teacher_pos, teacher_neg], 1),
        torch.cat([student_pos, student_neg], 1),
        mask,
        args.tau,
    )
    queue.enqueue(anchors, z_a.detach().float())
    masked = mask[:, k:].float().mean().item() if neg_ids.numel() else 0.0
    metrics = {"tokens": b * (k + 1), "negatives": float(neg_ids.numel()), "masked_frac": masked}
    return loss, metrics
