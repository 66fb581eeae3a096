"""Model classes by name, so a checkpoint builds back as the class that wrote it.

The trainer needs only a small protocol from a model (any `nn.Module`):
  param_groups() -> {"embedding", "lm_head", "matrix", "other": [parameters]}   (Muon takes "matrix")
  flops_per_token(seq_len) -> float                                            (MFU)
  arch() -> {"class": NAME, "config": {...}}                                   (checkpoint metadata)
and a class registered here under NAME with `from_arch(arch)` to rebuild it. The core registers
the GPT and the reward model; a study registers its own classes (e.g. a distillation student)
when its package is imported.
"""

from __future__ import annotations

from typing import Any

from lmlab.errors import LmlabError

_CLASSES: dict[str, Any] = {}


def register_model(name: str, cls: Any) -> Any:
    """Register `cls` (with a `from_arch(arch)` classmethod) under `name`; returns cls."""
    if not callable(getattr(cls, "from_arch", None)):
        raise TypeError(f"model class {cls.__name__} needs a from_arch(arch) classmethod")
    _CLASSES[name] = cls
    return cls


def _builtin() -> None:
    from lmlab.model.gpt import GPT
    from lmlab.model.heads import RewardModel

    _CLASSES.setdefault("gpt", GPT)
    _CLASSES.setdefault("reward", RewardModel)


def model_class(name: str) -> Any:
    _builtin()
    if name not in _CLASSES:
        raise LmlabError(
            f"unknown model class {name!r} (known: {', '.join(sorted(_CLASSES))}); "
            "the study that defines it registers it when imported"
        )
    return _CLASSES[name]


def build_model(arch: dict) -> Any:
    """A freshly initialised model of the class and config `arch` records."""
    return model_class(arch.get("class", "gpt")).from_arch(arch)


def arch_of(meta: dict) -> dict:
    """The architecture a checkpoint's meta records (older checkpoints: a GPT from meta['model'])."""
    if "arch" in meta:
        return meta["arch"]
    if "model" in meta:
        return {"class": "gpt", "config": meta["model"]}
    raise LmlabError("checkpoint metadata names no architecture ('arch' or 'model')")


def unwrap(model: Any) -> Any:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
