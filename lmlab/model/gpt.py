"""A GPT in the style of nanochat; reads top to bottom.

token embedding -> [RMSNorm] -> blocks of (RMSNorm -> [short conv] -> attention, RMSNorm -> MLP)
-> RMSNorm -> lm_head -> softcap. Attention: rotary embeddings, QK-norm, grouped-query heads, SDPA.
The residual branches' output projections start at zero, so a fresh model is the identity on the
residual stream and its loss starts at ln(vocab_size).

With a KV cache the attention writes its keys and values into the cache and reads every valid
cached position back (see `kv.py`); rotary positions then come from the cache, per row.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.errors import LmlabError
from lmlab.model.config import ModelConfig
from lmlab.model.kv import KVCache
from lmlab.model.loss import linear_cross_entropy

_SDPA_HAS_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, weight: bool, eps: float | None):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.dim,), self.weight, self.eps)


def rotary_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for positions 0..seq_len-1, shape [seq_len, head_dim / 2]."""
    inv_freq = cfg.rope_theta ** (
        -torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim
    )
    freqs = torch.outer(torch.arange(cfg.seq_len, dtype=torch.float32), inv_freq)
    return freqs.cos(), freqs.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate halves (Llama/HF layout). x: [B, T, H, D]; cos, sin: [B or 1, T, 1, D/2]."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attention(q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
    """SDPA over [B, H, T, D] queries and [B, Hkv, L, D] keys. Without a mask: causal when T > 1
    (T = L, a first chunk), and every key for a single query (a decode step)."""
    causal = mask is None and q.shape[2] > 1
    if q.shape[1] != k.shape[1]:
        if _SDPA_HAS_GQA:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True
            )
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


def fused_linear(x: torch.Tensor, linears: tuple[nn.Linear, ...]) -> torch.Tensor:
    """x through several linears of the same input, outputs concatenated in order (the QKV and
    gate/up projections). The parameters stay separate (checkpoints, the HF mapping and Muon's
    per-matrix updates see the same tensors); with gradients the computation is fused: ONE matmul
    over the stacked weights, forward and backward (the stacking copies a few MB a step). Without
    gradients each linear runs alone: a stacked copy kept for decoding measured no faster on CPU
    (bench/README.md) and would hold a second copy of 69% of the block weights."""
    if torch.is_grad_enabled():
        weights, biases = [lin.weight for lin in linears], [lin.bias for lin in linears]
        bias = torch.cat(biases) if biases[0] is not None else None
        return F.linear(x, torch.cat(weights), bias)
    return torch.cat([lin(x) for lin in linears], dim=-1)


class ShortConv(nn.Module):
    """Causal depthwise convolution added to its input: y_t = x_t + sum_j w_j * x_{t-j}, j < K.

    Each channel mixes the last K positions with its own weights (Canon layers, Allen-Zhu 2025;
    the short convolutions of H3, Mamba and Primer). Attention then sees the previous tokens'
    content at every position from the start; plain attention must first grow a previous-token
    head for that, and tasks that need it on both sides of a match (the retrieval study's
    "Q <key> / A" answer position) sit on a long plateau until it forms. With a KV cache the last
    K-1 inputs of each row are kept as state (`KVCache.conv_window`), independent of what a
    compression policy keeps.
    """

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(kernel, dim))

    def forward(self, x: torch.Tensor, window: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, d]; window [B, K-1+T, d]: the K-1 inputs before x, then x (None: zeros)."""
        K, T = self.weight.shape[0], x.shape[1]
        if window is None:
            window = F.pad(x, (0, 0, K - 1, 0))
        out = x
        for j in range(K):  # tap j looks j tokens back
            out = out + self.weight[j] * window[:, K - 1 - j : K - 1 - j + T]
        return out


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        d, hd = cfg.n_embd, cfg.head_dim
        self.c_q = nn.Linear(d, self.n_head * hd, bias=cfg.qkv_bias)
        self.c_k = nn.Linear(d, self.n_kv_head * hd, bias=cfg.qkv_bias)
        self.c_v = nn.Linear(d, self.n_kv_head * hd, bias=cfg.qkv_bias)
        self.c_proj = nn.Linear(self.n_head * hd, d, bias=False)
        self.q_norm = RMSNorm(hd, cfg.norm_weight, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.norm_weight, cfg.norm_eps) if cfg.qk_norm else None
        self.short_conv = ShortConv(d, cfg.short_conv) if cfg.short_conv else None

    def forward(self, x, cos, sin, kv_cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        if self.short_conv is not None:
            K = self.short_conv.weight.shape[0]
            window = None if kv_cache is None else kv_cache.conv_window(self.layer_idx, x, K)
            x = self.short_conv(x, window)
        H, Hkv = self.n_head, self.n_kv_head
        qkv = fused_linear(x, (self.c_q, self.c_k, self.c_v))
        qk, v = qkv.view(B, T, H + 2 * Hkv, self.head_dim).split((H + Hkv, Hkv), dim=2)
        # queries and keys are normed and rotated together, as one tensor of H + Hkv heads
        if self.q_norm is not None and self.q_norm.weight is None:  # the same weightless norm
            qk = self.q_norm(qk)
        elif self.q_norm is not None:
            qk = torch.cat([self.q_norm(qk[:, :, :H]), self.k_norm(qk[:, :, H:])], dim=2)
        q, k = apply_rotary(qk, cos, sin).split((H, Hkv), dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if kv_cache is None:
            y = attention(q, k, v, None)
        else:
            k, v, mask = kv_cache.update(self.layer_idx, q, k, v)
            y = attention(q, k, v, mask)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        self.c_fc = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
        self.c_gate = (
            nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False) if cfg.mlp == "swiglu" else None
        )
        self.c_proj = nn.Linear(cfg.mlp_hidden, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.c_gate is not None:
            gate, up = fused_linear(x, (self.c_gate, self.c_fc)).chunk(2, dim=-1)
            return self.c_proj(F.silu(gate) * up)
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.norm_attn = RMSNorm(cfg.n_embd, cfg.norm_weight, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.norm_mlp = RMSNorm(cfg.n_embd, cfg.norm_weight, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, kv_cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x), cos, sin, kv_cache)
        return x + self.mlp(self.norm_mlp(x))


class GPT(nn.Module):
    """The language model. `with_lm_head=False` builds a backbone (reward models, encoders) whose
    `hidden()` is its output: no unused output layer, so DDP sees a gradient for every weight."""

    arch_name = "gpt"

    def __init__(self, cfg: ModelConfig, with_lm_head: bool = True):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.norm_embed = (
            RMSNorm(cfg.n_embd, cfg.norm_weight, cfg.norm_eps) if cfg.embed_norm else None
        )
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_out = RMSNorm(cfg.n_embd, cfg.norm_weight, cfg.norm_eps)
        untied = with_lm_head and not cfg.tie_embeddings
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False) if untied else None
        self.has_lm_head = with_lm_head
        cos, sin = rotary_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """nanochat init: uniform matrices with std init_std, zero output projections, a tiny lm_head.
        Tied embeddings are initialised with std n_embd**-0.5 (they double as the output layer)."""
        cfg = self.cfg
        std = cfg.init_std if cfg.init_std is not None else cfg.n_embd**-0.5
        bound = math.sqrt(3.0) * std
        if cfg.tie_embeddings:
            nn.init.normal_(self.wte.weight, std=cfg.n_embd**-0.5)
        else:
            nn.init.normal_(self.wte.weight, std=cfg.embed_init_std)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=cfg.lm_head_init_std)
        for block in self.blocks:
            a, m = block.attn, block.mlp
            for lin in (a.c_q, a.c_k, a.c_v, m.c_fc, m.c_gate):
                if lin is not None:
                    nn.init.uniform_(lin.weight, -bound, bound)
                    if lin.bias is not None:
                        nn.init.zeros_(lin.bias)
            nn.init.zeros_(a.c_proj.weight)
            nn.init.zeros_(m.c_proj.weight)
            if a.short_conv is not None:  # PyTorch's Conv1d default, as Canon layers and Mamba
                k = a.short_conv.weight.shape[0]
                nn.init.uniform_(a.short_conv.weight, -(k**-0.5), k**-0.5)
        for mod in self.modules():
            if isinstance(mod, RMSNorm) and mod.weight is not None:
                nn.init.ones_(mod.weight)
        self.rope_cos.copy_(rotary_tables(cfg)[0])
        self.rope_sin.copy_(rotary_tables(cfg)[1])

    def hidden(self, ids: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """ids [B, T] -> the final normalised hidden states [B, T, n_embd] (what the output layer,
        a reward head or a pooled encoder read)."""
        B, T = ids.shape
        if kv_cache is None:
            if T > self.cfg.seq_len:
                raise LmlabError(
                    f"sequence of {T} tokens exceeds the context of {self.cfg.seq_len}"
                )
            cos, sin = self.rope_cos[None, :T, None, :], self.rope_sin[None, :T, None, :]
        else:
            if kv_cache.max_position(T) >= self.cfg.seq_len:
                raise LmlabError(
                    f"position {kv_cache.max_position(T)} exceeds the context of {self.cfg.seq_len}"
                )
            pos = kv_cache.positions(T, ids.device)
            cos, sin = self.rope_cos[pos][:, :, None, :], self.rope_sin[pos][:, :, None, :]

        x = self.wte(ids)
        if self.norm_embed is not None:
            x = self.norm_embed(x)
        for block in self.blocks:
            x = block(x, cos, sin, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.norm_out(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., n_embd] -> float32 logits [..., V], soft-capped."""
        logits = F.linear(h, self.output_weight()).float()
        if self.cfg.softcap is not None:
            cap = self.cfg.softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def forward(
        self,
        ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        loss_reduction: Literal["mean", "sum", "none"] = "mean",
        last_only: bool = False,
    ) -> torch.Tensor:
        """ids [B, T] -> logits [B, T, V] float32 (or [B, 1, V] with last_only), or with targets the
        cross-entropy (ignore_index=-1): a scalar for "mean"/"sum", [B, T] for "none"."""
        x = self.hidden(ids, kv_cache)
        if last_only:
            x = x[:, -1:]
        if targets is None:
            return self.logits(x)
        # the output layer, the cap and the loss in one chunked pass (model/loss.py)
        return linear_cross_entropy(
            x, self.output_weight(), targets, self.cfg.softcap, reduction=loss_reduction
        )

    def output_weight(self) -> torch.Tensor:
        if not self.has_lm_head:
            raise LmlabError("this GPT is a backbone without a language-model head")
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    # ---- the trainer's model protocol ---------------------------------------------------------
    def arch(self) -> dict:
        """What a checkpoint records to build this model back (see model/registry.py)."""
        return {"class": self.arch_name, "config": self.cfg.model_dump(mode="json")}

    @classmethod
    def from_arch(cls, arch: dict) -> GPT:
        return cls(ModelConfig.model_validate(arch["config"]))

    # ---- bookkeeping ----------------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        return self.cfg.flops_per_token(seq_len)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Disjoint groups covering every parameter once, for AdamW/Muon splitting:
        embedding (wte; also the output layer when tied), lm_head, matrix (2D block weights),
        other (norm gains, biases, short-conv taps: AdamW, never Muon)."""
        groups: dict[str, list[nn.Parameter]] = {
            "embedding": [self.wte.weight],
            "lm_head": [] if self.lm_head is None else [self.lm_head.weight],
            "matrix": [],
            "other": [],
        }
        for name, p in self.blocks.named_parameters():
            matrix = p.ndim == 2 and "short_conv" not in name
            groups["matrix" if matrix else "other"].append(p)
        for mod in (self.norm_embed, self.norm_out):
            if mod is not None:
                groups["other"].extend(mod.parameters())
        return groups
