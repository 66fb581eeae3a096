"""ModelConfig: one `depth` dial; every architectural choice is a field.

Derived sizes (nanochat rule, aspect ratio 64):
  n_layer  = depth
  n_embd   = 64 * depth
  n_head   = max(1, n_embd // 64)
  head_dim = n_embd // n_head            (set it to decouple, Qwen3-style: q = n_head * head_dim)
  n_kv_head = n_head                     (smaller = grouped-query attention; must divide n_head)
  mlp_hidden = int(mlp_ratio * n_embd)

A Llama/Qwen-like variant is a config: mlp="swiglu", norm_weight=True, qk_norm=False (Llama) or
True (Qwen3), embed_norm=False, logit_softcap=None, qkv_bias=True (Qwen2), rope_theta=5e5.
`short_conv=K` adds a causal depthwise convolution over the last K positions to each attention
input (Canon layers; the short convolutions of H3, Mamba and Primer): see gpt.ShortConv.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    depth: int = Field(4, ge=1, description="The one dial: layers, width and heads derive from it.")
    # Sizes derived from `depth` when not given; always plain ints after validation.
    n_layer: int = Field(None, ge=1, description="Transformer blocks (default: depth).")
    n_embd: int = Field(None, ge=1, description="Residual width (default: 64 * depth).")
    n_head: int = Field(None, ge=1, description="Query heads (default: max(1, n_embd // 64)).")
    n_kv_head: int = Field(None, ge=1, description="Key/value heads (default: n_head).")
    head_dim: int = Field(None, ge=2, description="Per-head width (default: n_embd // n_head).")
    vocab_size: int = Field(50304, ge=1, description="Set by the trainer from the tokenizer.")
    seq_len: int = Field(256, ge=1, description="Maximum context in tokens.")
    mlp: Literal["relu2", "swiglu"] = "relu2"
    mlp_ratio: float = Field(4.0, gt=0)
    mlp_hidden: int = Field(None, ge=1, description="MLP width (default: mlp_ratio * n_embd).")
    norm: Literal["rmsnorm"] = "rmsnorm"
    norm_weight: bool = Field(False, description="Learnable RMSNorm gains (nanochat: none).")
    norm_eps: float | None = Field(None, gt=0, description="None: torch's default (dtype eps).")
    embed_norm: bool = Field(True, description="RMSNorm right after the token embedding.")
    qk_norm: bool = True
    qkv_bias: bool = False
    short_conv: int = Field(
        0,
        ge=0,
        description="Kernel of a causal depthwise convolution on each attention input (0: off).",
    )
    tie_embeddings: bool = False
    logit_softcap: float | None = Field(15.0, ge=0, description="cap*tanh(x/cap); None or 0: off.")
    rope_theta: float = Field(10000.0, gt=0)
    init_std: float | None = Field(None, gt=0, description="Block matrices (None: n_embd**-0.5).")
    embed_init_std: float = Field(1.0, gt=0)
    lm_head_init_std: float = Field(0.001, ge=0)
    compile: bool = Field(False, description="Callers wrap the model in torch.compile when set.")

    # ---- derived sizes -------------------------------------------------------------------------
    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        """Fill every size the input leaves out (or sets to null) from the depth dial."""
        if not isinstance(data, dict):
            return data
        data = dict(data)

        def given(key: str) -> bool:
            return data.get(key) is not None

        depth = data.get("depth", cls.model_fields["depth"].default)
        if not isinstance(depth, int) or isinstance(depth, bool):
            return data  # field validation reports the bad depth
        if not given("n_layer"):
            data["n_layer"] = depth
        if not given("n_embd"):
            data["n_embd"] = 64 * depth
        width = data["n_embd"]
        if isinstance(width, int):
            if not given("n_head"):
                data["n_head"] = max(1, width // 64)
            if not given("mlp_hidden"):
                ratio = data.get("mlp_ratio", cls.model_fields["mlp_ratio"].default)
                if isinstance(ratio, int | float):
                    data["mlp_hidden"] = int(ratio * width)
        heads = data.get("n_head")
        if isinstance(heads, int) and heads > 0:
            if not given("n_kv_head"):
                data["n_kv_head"] = heads
            if not given("head_dim") and isinstance(width, int):
                if width % heads:
                    raise ValueError(
                        f"n_embd={width} is not divisible by n_head={heads} "
                        "(set n_head to a divisor of n_embd, or set head_dim explicitly)"
                    )
                data["head_dim"] = width // heads
        return data

    @property
    def softcap(self) -> float | None:
        return self.logit_softcap or None

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head} "
                "(grouped-query attention needs whole groups)"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        return self

    # ---- size and cost --------------------------------------------------------------------------
    def num_params(self) -> int:
        """Parameter count, computed from the config (equals GPT(cfg).num_params())."""
        d, h, kv, hd = self.n_embd, self.n_head, self.n_kv_head, self.head_dim
        f, v = self.mlp_hidden, self.vocab_size
        attn = d * h * hd + 2 * d * kv * hd + h * hd * d
        if self.qkv_bias:
            attn += h * hd + 2 * kv * hd
        mlp = (3 if self.mlp == "swiglu" else 2) * d * f
        norms = 0
        if self.norm_weight:
            norms = 2 * d + (2 * hd if self.qk_norm else 0)
        per_layer = attn + mlp + norms + self.short_conv * d
        total = self.n_layer * per_layer + v * d
        if not self.tie_embeddings:
            total += v * d
        if self.norm_weight:
            total += d * (2 if self.embed_norm else 1)
        return total

    def num_embedding_params(self) -> int:
        return self.vocab_size * self.n_embd

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (nanochat estimate_flops): 6 * non-embedding params for the
        matmuls (forward + backward) plus 12 * layers * heads * head_dim * seq_len for attention."""
        t = seq_len if seq_len is not None else self.seq_len
        dense = self.num_params() - self.num_embedding_params()
        return 6.0 * dense + 12.0 * self.n_layer * self.n_head * self.head_dim * t
