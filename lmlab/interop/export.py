"""`lmlab export --format hf`: a checkpoint as a directory transformers loads without remote code.

    DIR/
      config.json               the family's config (see mapping.FAMILIES), architectures set
      generation_config.json    bos/eos/pad ids (eos = lmlab's end of turn)
      model.safetensors         weights under the family's names
      tokenizer.json, tokenizer_config.json, chat_template.jinja
      lmlab_export.json         where it came from: run, checkpoint, step, family

The directory is written into a temporary folder and renamed into place, so a failed export
leaves nothing half-written.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from lmlab import __version__
from lmlab.errors import LmlabError
from lmlab.interop.hf_tokenizer import to_hf_tokenizer
from lmlab.interop.mapping import family_for, hf_config, to_hf_state
from lmlab.paths import atomic_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _load(ckpt: Path):
    from lmlab.model.checkpoint import load_model, load_tokenizer_for, resolve_checkpoint
    from lmlab.model.gpt import GPT

    path = resolve_checkpoint(ckpt)
    model, meta = load_model(path)
    if not isinstance(model, GPT) or not getattr(model, "has_lm_head", True):
        kind = (meta.get("arch") or {}).get("class", type(model).__name__)
        raise LmlabError(
            f"{path}: only language models (arch class 'gpt') export, this is {kind!r}"
        )
    return path, model, meta, load_tokenizer_for(path)


def export_hf(
    ckpt: str | Path, out: str | Path, dtype: str = "float32", force: bool = False
) -> Path:
    """Write the checkpoint (a run or checkpoint directory) as a transformers model in `out`."""
    if dtype not in DTYPES:
        raise LmlabError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise LmlabError(f"{out} exists and is not empty (pass --force to replace it)")
    path, model, meta, tok = _load(Path(ckpt))
    cfg = model.cfg
    family = family_for(cfg)
    hf_tok = to_hf_tokenizer(tok, cfg.seq_len)
    eos = [tok.eot_id]
    if getattr(hf_tok, "eos_token_id", None) not in (None, tok.eot_id):
        eos.append(hf_tok.eos_token_id)  # an imported tokenizer's own end of text
    pad = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else tok.eot_id
    ids = {"bos_token_id": tok.bos_id, "eos_token_id": eos[0] if len(eos) == 1 else eos}
    # No pad id in the model config: transformers makes it the embedding's padding_idx, whose
    # row then never trains when someone fine-tunes the export (pad is eot here). Generation
    # and the tokenizer still name it.
    hf_cfg = hf_config(cfg, family, pad_token_id=None, **ids)
    hf_cfg.dtype = dtype
    state = {
        k: v.to(DTYPES[dtype]) for k, v in to_hf_state(model.state_dict(), cfg, family).items()
    }

    from transformers import GenerationConfig

    with atomic_dir(out) as tmp:
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        hf_cfg.save_pretrained(tmp)
        GenerationConfig(pad_token_id=pad, **ids).save_pretrained(tmp)
        hf_tok.save_pretrained(tmp)
        provenance = {
            "source": str(path),
            "step": meta.get("step"),
            "model_type": family.model_type,
            "class": family.hf_class,
            "dtype": dtype,
            "tokenizer_hash": tok.hash,
            "lmlab_version": __version__,
        }
        (tmp / "lmlab_export.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return out
