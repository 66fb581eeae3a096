"""Checkpoints: safetensors weights + JSON metadata (+ optimizer state), never pickles.

    <run>/checkpoints/<tag>/          tag = latest | best | step_000100
      model.safetensors
      meta.json                       model config, tokenizer meta, step, metrics, train config
      optim.safetensors, optim.json   optimizer tensors and the rest (latest only: for resume)
    <run>/tokenizer/                  the tokenizer the run used, so a run dir stands alone

A checkpoint is written into a temporary folder and renamed into place, so a crash mid-write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmlab.errors import LmlabError
from lmlab.model.registry import arch_of, build_model, unwrap
from lmlab.paths import atomic_dir

MODEL_FILE, META_FILE = "model.safetensors", "meta.json"
OPTIM_TENSORS, OPTIM_JSON = "optim.safetensors", "optim.json"


_unwrap = unwrap  # DDP and torch.compile wrappers


def _flatten_optim(opts: list[torch.optim.Optimizer]) -> tuple[dict, dict]:
    tensors: dict[str, torch.Tensor] = {}
    plain: list[dict] = []
    for i, opt in enumerate(opts):
        sd = opt.state_dict()
        state_plain: dict[str, dict] = {}
        for pid, pstate in sd["state"].items():
            entry = {}
            for k, v in pstate.items():
                if torch.is_tensor(v):
                    tensors[f"{i}.{pid}.{k}"] = v.detach().cpu().contiguous()
                else:
                    entry[k] = v
            state_plain[str(pid)] = entry
        plain.append({"param_groups": sd["param_groups"], "state": state_plain})
    return tensors, {"optimizers": plain}


def _unflatten_optim(opts: list[torch.optim.Optimizer], tensors: dict, plain: dict) -> None:
    saved = plain["optimizers"]
    if len(saved) != len(opts):
        raise LmlabError(f"checkpoint has {len(saved)} optimizer(s), this run builds {len(opts)}")
    for i, (opt, sd) in enumerate(zip(opts, saved, strict=True)):
        state: dict[int, dict[str, Any]] = {}
        for pid, entry in sd["state"].items():
            state[int(pid)] = dict(entry)
        for key, t in tensors.items():
            oi, pid, name = key.split(".", 2)
            if int(oi) == i:
                state.setdefault(int(pid), {})[name] = t
        opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def save_checkpoint(
    ckpt_dir: str | Path,
    model: torch.nn.Module,
    meta: dict,
    optimizers: list[torch.optim.Optimizer] | None = None,
    trainer_state: dict | None = None,
) -> Path:
    ckpt_dir = Path(ckpt_dir)
    with atomic_dir(ckpt_dir) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
        save_file(state, tmp / MODEL_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        if optimizers is not None:
            tensors, plain = _flatten_optim(optimizers)
            save_file(tensors, tmp / OPTIM_TENSORS)
            plain["trainer"] = trainer_state or {}
            (tmp / OPTIM_JSON).write_text(json.dumps(plain, default=str))
    return ckpt_dir


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir, or a run dir (its best checkpoint, else latest)."""
    path = Path(path)
    if (path / MODEL_FILE).exists():
        return path
    for tag in ("best", "latest"):
        if (path / "checkpoints" / tag / MODEL_FILE).exists():
            return path / "checkpoints" / tag
    if not path.exists():
        raise LmlabError(f"checkpoint not found: {path}")
    raise LmlabError(f"no checkpoint in {path} (expected {MODEL_FILE} or checkpoints/best|latest)")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """load_file, with the file's name in the error (safetensors' own says only "invalid header
    length" for a truncated file)."""
    try:
        return load_file(path, device="cpu")
    except Exception as e:  # SafetensorError, OSError: a missing, truncated or foreign file
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise LmlabError(f"{path}: cannot read checkpoint tensors ({first})") from None


def read_meta(ckpt: str | Path) -> dict:
    ckpt = resolve_checkpoint(ckpt)
    try:
        return json.loads((ckpt / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LmlabError(f"{ckpt / META_FILE}: unreadable checkpoint metadata ({e})") from None


def load_model(ckpt: str | Path, device: str | torch.device = "cpu"):
    """(model, meta) from a checkpoint or run directory, built as the class it was saved as
    (meta["arch"]; a GPT for older checkpoints)."""
    ckpt = resolve_checkpoint(ckpt)
    meta = read_meta(ckpt)
    try:
        model = build_model(arch_of(meta))
    except (ValueError, KeyError) as e:  # pydantic's ValidationError is a ValueError
        raise LmlabError(
            f"{ckpt / META_FILE}: invalid architecture ({e})".splitlines()[0]
        ) from None
    state = _load_tensors(ckpt / MODEL_FILE)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "rope_" not in k]  # buffers rebuilt from config
    if missing or unexpected:
        raise LmlabError(
            f"{ckpt}: weights do not match the config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return model.to(device), meta


def load_tokenizer_for(ckpt: str | Path):
    """The tokenizer a checkpoint was trained with (its run's tokenizer/ folder)."""
    from lmlab.text.tokenizer import load_tokenizer

    ckpt = resolve_checkpoint(ckpt)
    meta = read_meta(ckpt)
    candidates = [ckpt.parent.parent / "tokenizer"]
    if meta.get("tokenizer_dir"):
        candidates.append(Path(meta["tokenizer_dir"]))
    for c in candidates:
        if c.exists():
            tok = load_tokenizer(c)
            want = (meta.get("tokenizer") or {}).get("hash")
            if want and tok.hash != want:
                raise LmlabError(
                    f"tokenizer at {c} has hash {tok.hash} but {ckpt} was trained with {want}"
                )
            return tok
    raise LmlabError(
        f"tokenizer for {ckpt} not found (looked in {', '.join(map(str, candidates))})"
    )


def load_checkpoint(ckpt: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer, meta): everything needed to generate from a run."""
    model, meta = load_model(ckpt, device)
    return model, load_tokenizer_for(ckpt), meta


def load_training_state(ckpt: str | Path, model, optimizers) -> dict:
    """Restore weights and optimizer state for an exact resume; returns the trainer state."""
    ckpt = Path(ckpt)
    state = _load_tensors(ckpt / MODEL_FILE)
    _unwrap(model).load_state_dict(state, strict=False)
    try:
        plain = json.loads((ckpt / OPTIM_JSON).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LmlabError(f"{ckpt / OPTIM_JSON}: unreadable optimizer state ({e})") from None
    tensors = _load_tensors(ckpt / OPTIM_TENSORS)
    _unflatten_optim(optimizers, tensors, plain)
    return plain.get("trainer", {})
