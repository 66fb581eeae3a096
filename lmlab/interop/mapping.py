"""lmlab `ModelConfig` <-> Hugging Face configs, and the weight names between them, both ways.

A *family* is a transformers model type whose computation an lmlab GPT reproduces exactly for
some settings of its config fields (`requires`). Export picks the first family whose requirements
the config meets; import reads the family from `config.json`'s `model_type`.

| family   | lmlab fields it requires                                                           |
|----------|------------------------------------------------------------------------------------|
| nanochat | mlp=relu2, norm_weight=False, qk_norm=True, embed_norm=True, qkv_bias=False        |
| llama    | mlp=swiglu, norm_weight=True, qk_norm=False, embed_norm=False, no softcap, no bias  |
| qwen2    | as llama, with qkv_bias=True (Qwen2's q/k/v projections always carry a bias)       |
| qwen3    | as llama, with qk_norm=True (QK-norm with gains)                                   |
| mistral  | as llama (import only: export writes such a config as llama)                       |

None of them has short convolutions (`short_conv` > 0 has no transformers class).

Two conventions differ and are converted exactly:
- rotary sign: HF nanochat rotates by -angle (nanochat's own convention), lmlab and Llama by
  +angle. Negating the second half of every q/k head's projection rows turns one into the other
  (scores are unchanged, and a weightless RMSNorm commutes with the rotation, so HF nanochat's
  rope-then-norm order equals lmlab's norm-then-rope).
- norm epsilon: lmlab's `norm_eps=None` means torch's float32 eps; HF configs get that number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import ValidationError

from lmlab.errors import LmlabError
from lmlab.model.config import ModelConfig

FP32_EPS = float(torch.finfo(torch.float32).eps)  # F.rms_norm's eps when lmlab's norm_eps is None

_LLAMA_SHAPE = {
    "mlp": "swiglu",
    "norm_weight": True,
    "qk_norm": False,
    "embed_norm": False,
    "logit_softcap": None,
    "qkv_bias": False,
    "short_conv": 0,
}


@dataclass(frozen=True)
class Family:
    model_type: str
    hf_class: str
    requires: dict[str, Any]
    hidden_act: str = "silu"
    mlp_names: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")  # gate, up(fc), down
    norm_weights: bool = True
    rope_flip: bool = False
    export: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # HF config fields fixed by the family


FAMILIES: dict[str, Family] = {
    "nanochat": Family(
        "nanochat",
        "NanoChatForCausalLM",
        {
            "mlp": "relu2",
            "norm_weight": False,
            "qk_norm": True,
            "embed_norm": True,
            "qkv_bias": False,
            "short_conv": 0,
        },
        hidden_act="relu2",
        mlp_names=("fc1", "fc2"),
        norm_weights=False,
        rope_flip=True,
        extra={"attention_bias": False},
    ),
    "llama": Family(
        "llama",
        "LlamaForCausalLM",
        _LLAMA_SHAPE,
        extra={"attention_bias": False, "mlp_bias": False},
    ),
    "qwen2": Family(
        "qwen2",
        "Qwen2ForCausalLM",
        {**_LLAMA_SHAPE, "qkv_bias": True},
        extra={"use_sliding_window": False},
    ),
    "qwen3": Family(
        "qwen3",
        "Qwen3ForCausalLM",
        {**_LLAMA_SHAPE, "qk_norm": True},
        extra={"attention_bias": False, "use_sliding_window": False},
    ),
    "mistral": Family("mistral", "MistralForCausalLM", _LLAMA_SHAPE, export=False),
}


def _value(cfg: ModelConfig, key: str) -> Any:
    return cfg.softcap if key == "logit_softcap" else getattr(cfg, key)


def mismatches(cfg: ModelConfig, family: Family) -> list[str]:
    """`field=value` for each lmlab field whose value the family cannot represent."""
    return [
        f"{k}={_value(cfg, k)!r}" for k, want in family.requires.items() if _value(cfg, k) != want
    ]


def family_for(cfg: ModelConfig) -> Family:
    """The transformers family an export of `cfg` uses; LmlabError names the fields at fault."""
    candidates = [f for f in FAMILIES.values() if f.export]
    for fam in candidates:
        if not mismatches(cfg, fam):
            return fam
    nearest = min(candidates, key=lambda f: len(mismatches(cfg, f)))
    lacks = ", ".join(mismatches(cfg, nearest))
    conv = " (no transformers family has short convolutions)" if cfg.short_conv else ""
    raise LmlabError(
        f"no transformers class represents this model: nearest is {nearest.hf_class}, which "
        f"cannot hold {lacks}{conv}"
    )


# ---- configs -----------------------------------------------------------------------------------
def hf_config(cfg: ModelConfig, family: Family | None = None, **token_ids: int | None):
    """A transformers config computing what `cfg` computes (token ids: bos/eos/pad_token_id)."""
    from transformers import CONFIG_MAPPING

    family = family or family_for(cfg)
    bad = mismatches(cfg, family)
    if bad:
        raise LmlabError(f"{family.hf_class} cannot hold {', '.join(bad)}")
    kwargs: dict[str, Any] = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps or FP32_EPS,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": family.hidden_act,
        **family.extra,
        **token_ids,
    }
    if family.model_type == "nanochat":
        kwargs["final_logit_softcapping"] = cfg.softcap
    hf = CONFIG_MAPPING[family.model_type](**kwargs)
    hf.architectures = [family.hf_class]
    return hf


def _get(hf: Any, key: str, default: Any = None) -> Any:
    return hf.get(key, default) if isinstance(hf, Mapping) else getattr(hf, key, default)


def _rope_theta(hf: Any) -> float:
    """rope theta from `rope_parameters` (transformers 5) or the older `rope_theta`/`rope_scaling`;
    scaled rotary embeddings (llama3, yarn, linear, dynamic...) are refused by name."""
    params = _get(hf, "rope_parameters") or {}
    scaling = _get(hf, "rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise LmlabError(
            f"rope_parameters.rope_type={kind!r}: scaled rotary embeddings are not supported "
            "(lmlab implements the default rotary embedding only)"
        )
    return float(params.get("rope_theta") or _get(hf, "rope_theta") or 10000.0)


def model_config_from_hf(hf: Any, seq_len: int | None = None) -> tuple[ModelConfig, Family]:
    """(ModelConfig, family) for a transformers config (object or config.json dict).

    `seq_len` caps the context (default: max_position_embeddings). Fields lmlab cannot compute
    exactly (an output-projection or MLP bias, scaled rotary embeddings, a sliding window shorter
    than the context, another activation) raise LmlabError naming the field.
    """
    model_type = _get(hf, "model_type")
    family = FAMILIES.get(model_type)
    if family is None:
        have = ", ".join(FAMILIES)
        raise LmlabError(f"model_type={model_type!r} is not supported (supported: {have})")
    act = _get(hf, "hidden_act") or _get(hf, "hidden_activation")
    if act != family.hidden_act:
        raise LmlabError(
            f"hidden_act={act!r}: lmlab's {family.model_type} needs {family.hidden_act!r}"
        )
    for key in ("attention_bias", "mlp_bias"):
        if _get(hf, key):
            raise LmlabError(
                f"{key}=true: lmlab has no bias on the attention output projection or the MLP"
            )
    if _get(hf, "quantization_config"):
        raise LmlabError("quantization_config is set: import a full-precision checkpoint")
    context = int(_get(hf, "max_position_embeddings"))
    if seq_len is not None:
        context = min(context, seq_len)
    window = _get(hf, "sliding_window")
    if family.model_type.startswith("qwen") and not _get(hf, "use_sliding_window", False):
        window = None
    if window is not None and window < context:
        raise LmlabError(
            f"sliding_window={window} is shorter than the context {context}: lmlab attends to the "
            f"whole context (import with --seq-len {window} to stay within the window)"
        )
    heads = int(_get(hf, "num_attention_heads"))
    width = int(_get(hf, "hidden_size"))
    softcap = _get(hf, "final_logit_softcapping") if family.model_type == "nanochat" else None
    try:
        cfg = _model_config(hf, family, heads, width, context, softcap)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"]))
        what = f"{where}: " if where else ""
        msg = err["msg"].removeprefix("Value error, ")
        raise LmlabError(f"lmlab cannot build this model's shape: {what}{msg}") from None
    return cfg, family


def _model_config(hf, family, heads, width, context, softcap) -> ModelConfig:
    return ModelConfig(
        depth=int(_get(hf, "num_hidden_layers")),
        n_embd=width,
        n_head=heads,
        n_kv_head=int(_get(hf, "num_key_value_heads") or heads),
        head_dim=int(_get(hf, "head_dim") or width // heads),
        vocab_size=int(_get(hf, "vocab_size")),
        seq_len=context,
        mlp_hidden=int(_get(hf, "intermediate_size")),
        norm_eps=float(_get(hf, "rms_norm_eps")),
        rope_theta=_rope_theta(hf),
        tie_embeddings=bool(_get(hf, "tie_word_embeddings", False)),
        **{**family.requires, "logit_softcap": softcap},
    )


# ---- weights -----------------------------------------------------------------------------------
def weight_names(cfg: ModelConfig, family: Family) -> dict[str, str]:
    """lmlab state-dict name -> HF name, for every tensor both hold (tied lm_head left out)."""
    names = {"wte.weight": "model.embed_tokens.weight"}
    if family.norm_weights:
        names["norm_out.weight"] = "model.norm.weight"
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    mlp = dict(
        zip(("c_gate", "c_fc", "c_proj")[-len(family.mlp_names) :], family.mlp_names, strict=True)
    )
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        pairs = {"attn.c_proj.weight": "self_attn.o_proj.weight"}
        for proj in "qkv":
            pairs[f"attn.c_{proj}.weight"] = f"self_attn.{proj}_proj.weight"
            if cfg.qkv_bias:
                pairs[f"attn.c_{proj}.bias"] = f"self_attn.{proj}_proj.bias"
        for a, b in mlp.items():
            pairs[f"mlp.{a}.weight"] = f"mlp.{b}.weight"
        if family.norm_weights:
            pairs["norm_attn.weight"] = "input_layernorm.weight"
            pairs["norm_mlp.weight"] = "post_attention_layernorm.weight"
            if cfg.qk_norm:
                pairs["attn.q_norm.weight"] = "self_attn.q_norm.weight"
                pairs["attn.k_norm.weight"] = "self_attn.k_norm.weight"
        names.update({ours + a: theirs + b for a, b in pairs.items()})
    return names


def _flip_rope(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Negate the second half of each head's rows (an involution: the same call maps back)."""
    rows = t.reshape(-1, head_dim, *t.shape[1:]).clone()
    rows[:, head_dim // 2 :] *= -1
    return rows.reshape(t.shape)


def _convert(name: str, t: torch.Tensor, cfg: ModelConfig, family: Family) -> torch.Tensor:
    if family.rope_flip and (".attn.c_q." in name or ".attn.c_k." in name):
        return _flip_rope(t, cfg.head_dim)
    return t


def to_hf_state(
    state: Mapping[str, torch.Tensor], cfg: ModelConfig, family: Family
) -> dict[str, torch.Tensor]:
    """An lmlab GPT state dict as the family's HF state dict."""
    return {
        hf: _convert(ours, state[ours].detach(), cfg, family).contiguous()
        for ours, hf in weight_names(cfg, family).items()
    }


def from_hf_state(
    get: Callable[[str], torch.Tensor], keys: set[str], cfg: ModelConfig, family: Family, where: str
) -> dict[str, torch.Tensor]:
    """An lmlab GPT state dict read through `get(hf_name)`; `keys` are the HF tensors present.

    Tensors lmlab has no place for (biases, extra norms) are refused by name, since dropping them
    would silently change the function; rotary caches and a tied lm_head copy are ignored."""
    names = weight_names(cfg, family)
    wanted = set(names.values())
    ignorable = {"lm_head.weight"} if cfg.tie_embeddings else set()
    extra = sorted(k for k in keys - wanted - ignorable if not k.endswith("rotary_emb.inv_freq"))
    if extra:
        raise LmlabError(f"{where}: tensors lmlab has no place for: {', '.join(extra[:4])}")
    missing = sorted(wanted - keys)
    if missing:
        raise LmlabError(f"{where}: missing tensors {', '.join(missing[:4])}")
    return {ours: _convert(ours, get(hf), cfg, family) for ours, hf in names.items()}


def gpt_from_hf(hf_model: torch.nn.Module):
    """An lmlab GPT holding exactly the weights of an in-memory transformers model (fp32, eval)."""
    from lmlab.model.gpt import GPT

    cfg, family = model_config_from_hf(hf_model.config)
    state = hf_model.state_dict()
    gpt = GPT(cfg)
    ours = from_hf_state(state.__getitem__, set(state), cfg, family, type(hf_model).__name__)
    load_into(gpt, ours, type(hf_model).__name__)
    return gpt.eval()


def load_into(gpt: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Copy a mapped state into `gpt` (cast to its dtype); every parameter must be covered."""
    missing, unexpected = gpt.load_state_dict(dict(state), strict=False)
    if missing or unexpected:
        raise LmlabError(
            f"{where}: weight mapping incomplete (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
