"""The speed paths compute the same function: fused projections and the per-step KV mask against
the plain computation."""

import pytest
import torch
import torch.nn.functional as F

from lmlab.model.config import ModelConfig
from lmlab.model.engine import Engine, GenerationConfig
from lmlab.model.gpt import GPT


def _gpt(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(depth=2, n_embd=32, n_head=2, vocab_size=50, seq_len=64,
                      lm_head_init_std=0.5, **kw)  # fmt: skip
    m = GPT(cfg)
    with torch.no_grad():  # non-zero output projections, so every layer matters
        for b in m.blocks:
            b.attn.c_proj.weight.normal_(0, 0.2)
            b.mlp.c_proj.weight.normal_(0, 0.2)
    return m.eval()


def _reference_attention_block(attn, x, cos, sin):
    """The attention of one block written the plain way: separate q, k, v projections."""
    from lmlab.model.gpt import apply_rotary

    B, T, _ = x.shape
    q = attn.c_q(x).view(B, T, attn.n_head, attn.head_dim)
    k = attn.c_k(x).view(B, T, attn.n_kv_head, attn.head_dim)
    v = attn.c_v(x).view(B, T, attn.n_kv_head, attn.head_dim)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rotary(q, cos, sin).transpose(1, 2), apply_rotary(k, cos, sin).transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True,
                                       enable_gqa=q.shape[1] != k.shape[1])  # fmt: skip
    return attn.c_proj(y.transpose(1, 2).reshape(B, T, -1))


@pytest.mark.parametrize("kw", [{}, {"norm_weight": True, "n_kv_head": 1, "qkv_bias": True},
                                {"mlp": "swiglu", "qk_norm": False}])  # fmt: skip
def test_fused_projections_equal_separate_ones(kw):
    m = _gpt(**kw)
    with torch.no_grad():
        for mod in m.modules():  # gains that differ, so a swapped q/k norm would show
            if hasattr(mod, "weight") and mod.weight is not None and mod.weight.ndim == 1:
                mod.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 7, 32)
    cos, sin = m.rope_cos[None, :7, None, :], m.rope_sin[None, :7, None, :]
    attn = m.blocks[0].attn
    for grad in (True, False):  # training stacks the weights; inference runs each linear
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(
                attn(x, cos, sin), _reference_attention_block(attn, x, cos, sin)
            )
    mlp = m.blocks[0].mlp
    if mlp.c_gate is not None:
        with torch.no_grad():
            ref = mlp.c_proj(F.silu(mlp.c_gate(x)) * mlp.c_fc(x))
            torch.testing.assert_close(mlp(x), ref)


def test_cached_decode_equals_full_forward_logits():
    """The per-step mask (built once per step, none for a dense decode step) gives the logits of
    the uncached forward at every position, with and without left padding."""
    m = _gpt()
    ids = torch.randint(0, 50, (3, 20))
    prompts = [ids[0, :12].tolist(), ids[1, :5].tolist(), ids[2, :9].tolist()]
    eng = Engine(m)
    gens = eng.generate(prompts, GenerationConfig(max_new_tokens=8, temperature=0.0, logprobs=0))
    with torch.no_grad():
        for p, g in zip(prompts, gens, strict=True):
            full = torch.tensor([p + g.tokens])
            logp = m(full).log_softmax(-1)[0, len(p) - 1 : -1]
            want = logp.gather(1, torch.tensor(g.tokens)[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(g.logprobs, dtype=torch.float32), want,
                                       rtol=1e-4, atol=1e-4)  # fmt: skip
            assert g.tokens == logp.argmax(-1).tolist()
