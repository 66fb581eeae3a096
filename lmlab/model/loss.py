"""Output layer + soft cap + cross-entropy in one chunked pass that never holds the [N, V] logits.

`GPT.forward(ids, targets)` computes, for hidden states h [N, d] and output weights W [V, d],

    z = cap * tanh(h @ W.T / cap)          (z = h @ W.T without a cap)
    loss_i = logsumexp(z_i) - z_i[target_i]

The plain way materialises the float32 logits of every token and their gradient, and the cap alone
costs three more passes over them each way (8% of a training step at vocabulary 8192, width 256).
Here rows go through in chunks small enough to stay in cache; each chunk's gradient is known as
soon as its loss is (d loss / d z = softmax(z) - onehot(target)), so it is pushed through the cap
and both matmuls right away and only grad_h [N, d] and grad_W [V, d] are kept for the backward
(the approach of Liger-Kernel's fused linear cross-entropy and of Apple's Cut Cross-Entropy). The
1/cap is folded into a scaled copy of W, so the cap costs one tanh and one multiply per logit.

Same FLOPs, same function: the loss and both gradients match the plain computation within fp32
rounding (tests/test_loss.py). Without gradients (evaluation) it is just the chunked loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_ROWS = 256  # [256, V] float32 chunks: 8 MiB at V = 8192, within a CPU's L3


def _chunk_loss(h_c, w_scaled, t_c, cap, ignore_index, want_grad):
    """One chunk: per-row losses, and (when wanted) d(sum of losses)/d(pre-cap logits)."""
    u = F.linear(h_c, w_scaled).float()  # h @ W.T / cap, or the logits themselves without a cap
    if cap is not None:
        t = u.tanh_()  # in place: u is not needed again
        z = t * cap
    else:
        t, z = None, u
    lse = torch.logsumexp(z, dim=-1)
    keep = t_c != ignore_index
    safe = torch.where(keep, t_c, 0)
    loss = torch.where(keep, lse - z.gather(1, safe[:, None]).squeeze(1), 0.0)
    if not want_grad:
        return loss, None
    g = z.sub_(lse[:, None]).exp_()  # softmax, in z's buffer
    g.scatter_add_(1, safe[:, None], torch.full_like(lse[:, None], -1.0))
    g.mul_(keep[:, None])
    if t is not None:  # dz/du = cap * (1 - t^2), and du/dh = W / cap: the caps cancel
        g.mul_(t.square_().neg_().add_(1.0))
    return loss, g


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, cap, ignore_index, mean, chunk):
        w_scaled = weight if cap is None else weight * (1.0 / cap)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk):
            h_c = h[s : s + chunk]
            loss, g = _chunk_loss(h_c, w_scaled, targets[s : s + chunk], cap, ignore_index, True)
            total += loss.sum()
            g = g.to(h.dtype)
            grad_h[s : s + chunk] = g @ weight.to(h.dtype)
            grad_w += (g.T @ h_c).float()
        if mean:
            n = (targets != ignore_index).sum().clamp(min=1)
            total, grad_h, grad_w = total / n, grad_h / n, grad_w / n
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None, None, None, None


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    softcap: float | None = None,
    ignore_index: int = -1,
    reduction: str = "mean",
    chunk: int = CHUNK_ROWS,
) -> torch.Tensor:
    """Cross-entropy of `cap * tanh(h @ weight.T / cap)` against `targets`.

    h [..., d], targets [...] (ignore_index marks rows without a target); reduction "mean" (over
    rows with a target), "sum" or "none" (a loss per row, shaped like targets)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be mean, sum or none, not {reduction!r}")
    shape = targets.shape
    h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    needs_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    if needs_grad and reduction != "none":
        return _LinearCrossEntropy.apply(
            h, weight, targets, softcap, ignore_index, reduction == "mean", chunk
        )
    if needs_grad:  # per-row losses with a graph: the plain computation
        logits = F.linear(h, weight).float()
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none")
        return loss.view(shape)
    with torch.no_grad():
        w_scaled = weight if softcap is None else weight * (1.0 / softcap)
        losses = torch.cat(
            [
                _chunk_loss(h[s : s + chunk], w_scaled, targets[s : s + chunk], softcap,
                            ignore_index, False)[0]
                for s in range(0, h.shape[0], chunk)
            ]
        )  # fmt: skip
    if reduction == "none":
        return losses.view(shape)
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / (targets != ignore_index).sum().clamp(min=1)
