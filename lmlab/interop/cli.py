"""`lmlab export` and `lmlab import`: lmlab checkpoints <-> Hugging Face model directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmlab.errors import LmlabError


def export_command(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Run directory or checkpoint directory.")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write the exported model to.")],
    fmt: Annotated[str, typer.Option("--format", help="Export format: hf.")] = "hf",
    dtype: Annotated[
        str, typer.Option("--dtype", help="Weight dtype: float32 | bfloat16 | float16.")
    ] = "float32",
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
) -> None:
    """Export a checkpoint as a Hugging Face model (transformers loads it without remote code).

    The architecture picks the class: lmlab's default -> NanoChatForCausalLM, Llama-shaped ->
    LlamaForCausalLM, Qwen2-shaped (qkv_bias) -> Qwen2ForCausalLM, Qwen3-shaped (QK-norm with
    gains) -> Qwen3ForCausalLM; anything else is an error naming the fields no class holds.

    Example: lmlab export --ckpt runs/smoke-1a2b3c4d --format hf --out exported/smoke
    """
    from lmlab.interop.export import export_hf

    if fmt != "hf":
        raise LmlabError(f"--format {fmt!r}: the only export format is 'hf'")
    path = export_hf(ckpt, out, dtype=dtype, force=force)
    typer.echo(f"exported {ckpt} to {path}")


def import_command(
    hf: Annotated[Path, typer.Option("--hf", help="Local transformers model directory.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Run directory to create (default: <runs>/import-<name>-<hash8>)."
        ),
    ] = None,
    seq_len: Annotated[
        int | None,
        typer.Option("--seq-len", help="Cap the context (default: max_position_embeddings)."),
    ] = None,
) -> None:
    """Import a local Llama / Qwen2 / Qwen3 / Mistral / nanochat model as an lmlab run directory.

    The run loads in `lmlab generate`, `lmlab chat`, the engine (every KV policy) and the server;
    chat uses the model's own chat template. Nothing is downloaded.

    Example: lmlab import --hf ~/models/SmolLM2-135M-Instruct --out runs/smollm2
    """
    from lmlab.interop.hf_import import import_hf

    if seq_len is not None and seq_len < 1:
        raise LmlabError(f"--seq-len {seq_len}: must be at least 1")
    run = import_hf(hf, out, seq_len=seq_len)
    typer.echo(f"imported {hf} to {run.path}")
