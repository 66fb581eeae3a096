"""`lmlab import --hf DIR`: a local transformers model directory becomes an lmlab run directory.

    <run>/config.yaml                 what was imported (source, family, context cap)
    <run>/tokenizer/                  the HF tokenizer, wrapped (lmlab.text.hf_pretrained)
    <run>/checkpoints/best/           model.safetensors (lmlab names, float32) + meta.json
    <run>/status.json                 written last

Weights are read from safetensors files only (a pickled `pytorch_model.bin` is never loaded);
nothing is downloaded: DIR must hold config.json, the weights and the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmlab import __version__
from lmlab.errors import LmlabError
from lmlab.interop.mapping import from_hf_state, load_into, model_config_from_hf

INDEX = "model.safetensors.index.json"


def _read_config(src: Path) -> dict:
    file = src / "config.json"
    if not file.is_file():
        raise LmlabError(
            f"{src}: no config.json (expected a transformers save_pretrained directory)"
        )
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise LmlabError(f"{file}: not JSON ({e})") from None


def hf_model_config(src: Path, seq_len: int | None = None):
    """(ModelConfig, family, transformers config) of the model in `src`; clear errors first."""
    raw = _read_config(src)
    try:  # an unsupported model_type or field fails here, by name, before transformers reads it
        model_config_from_hf(raw, seq_len)
    except (TypeError, ValueError, KeyError):
        pass  # a field left to the class default: transformers fills it in below
    from transformers import AutoConfig

    try:
        hf = AutoConfig.from_pretrained(str(src), local_files_only=True, trust_remote_code=False)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LmlabError(f"{src / 'config.json'}: transformers cannot read it ({first})") from None
    cfg, family = model_config_from_hf(hf, seq_len)  # with transformers' defaults filled in
    return cfg, family, hf


def weight_files(src: Path) -> list[Path]:
    if (src / INDEX).is_file():
        index = json.loads((src / INDEX).read_text())
        return sorted({src / f for f in index["weight_map"].values()})
    files = sorted(src.glob("*.safetensors"))
    if files:
        return files
    if any(src.glob("*.bin")) or any(src.glob("*.pt")):
        raise LmlabError(
            f"{src}: only safetensors weights are read (pickled .bin/.pt files are never loaded); "
            "re-save the model with save_pretrained(..., safe_serialization=True)"
        )
    raise LmlabError(f"{src}: no model.safetensors")


def read_weights(src: Path, cfg, family) -> dict:
    """The lmlab state dict of the model in `src`, tensor by tensor from its safetensors files."""
    from safetensors import safe_open

    handles = [safe_open(str(f), framework="pt") for f in weight_files(src)]
    where: dict[str, object] = {}
    for h in handles:
        for key in h.keys():
            where[key] = h
    return from_hf_state(
        lambda k: where[k].get_tensor(k).float(), set(where), cfg, family, str(src)
    )


def import_hf(
    src: str | Path,
    out: str | Path | None = None,
    seq_len: int | None = None,
    name: str | None = None,
):
    """Import the model in `src`; returns the RunDir (default: <runs>/import-<dir name>-<hash8>)."""
    from lmlab.model.checkpoint import load_tokenizer_for, save_checkpoint
    from lmlab.model.gpt import GPT
    from lmlab.runs.rundir import RunDir
    from lmlab.text.hf_pretrained import PretrainedTokenizer
    from lmlab.text.tokenizer import load_tokenizer

    src = Path(src).expanduser().resolve()
    if not src.is_dir():
        raise LmlabError(f"--hf {src}: not a directory")
    cfg, family, hf_cfg = hf_model_config(src, seq_len)
    tok = PretrainedTokenizer.from_dir(src, vocab_size=cfg.vocab_size)
    record = {
        "command": "import",
        "hf_dir": str(src),
        "model_type": family.model_type,
        "architectures": list(getattr(hf_cfg, "architectures", None) or []),
        "seq_len": cfg.seq_len,
        "model": cfg.model_dump(mode="json"),
    }
    run = RunDir.create(record, name=name or f"import-{src.name}", run_dir=out)
    with run.running():
        model = GPT(cfg)
        load_into(model, read_weights(src, cfg, family), str(src))
        tok.save(run.path / "tokenizer")
        saved = load_tokenizer(run.path / "tokenizer")  # the hash a later load will see
        arch = {"class": "gpt", "config": cfg.model_dump(mode="json")}
        meta = {
            "arch": arch,
            "model": arch["config"],
            "tokenizer": saved.meta(),
            "step": 0,
            "metrics": {},
            "imported_from": {"hf_dir": str(src), "model_type": family.model_type},
            "lmlab_version": __version__,
        }
        save_checkpoint(run.checkpoints / "best", model, meta)
        load_tokenizer_for(run.checkpoints / "best")  # the run stands alone: fail now, not later
    return run
