"""`lmlab generate` and `lmlab chat`: the engine behind a command line, with the one template."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated

import typer

from lmlab.cli_common import DeviceOpt
from lmlab.errors import LmlabError

CkptOpt = Annotated[Path, typer.Option("--ckpt", help="Run directory or checkpoint directory.")]
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate at most.")]
TempOpt = Annotated[float, typer.Option("--temperature", help="0 = greedy.")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Sample from the k most likely (0 = off).")]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass (1 = off).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Sampling seed.")]
PolicyOpt = Annotated[
    str, typer.Option("--kv-policy", help="full | snapkv | streamingllm | h2o | random.")
]
BudgetOpt = Annotated[float, typer.Option("--kv-budget", help="Fraction of prompt KV kept.")]


def _load(ckpt: Path, device: str):
    from lmlab.device import pick_device
    from lmlab.model.checkpoint import load_checkpoint
    from lmlab.model.engine import Engine

    model, tok, meta = load_checkpoint(ckpt, pick_device(device))
    return Engine(model, tok), tok, model.cfg


def generate_command(
    ckpt: CkptOpt,
    prompt: Annotated[str, typer.Option("--prompt", help="Text to continue.")],
    max_new_tokens: MaxNewOpt = 64,
    temperature: TempOpt = 0.0,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = 0,
    kv_policy: PolicyOpt = "full",
    kv_budget: BudgetOpt = 1.0,
    device: DeviceOpt = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
) -> None:
    """Continue a text prompt with a trained model (no chat template).

    Example: lmlab generate --ckpt runs/smoke-1a2b3c4d --prompt "The cat" --max-new-tokens 20
    """
    from lmlab.model.engine import GenerationConfig

    engine, tok, _ = _load(ckpt, device)
    ids = [tok.bos_id, *tok.encode(prompt)]
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        kv_policy=kv_policy,
        kv_budget=kv_budget,
        banned_tokens=[tok.bos_id],
    )
    (gen,) = engine.generate([ids], cfg)
    if as_json:
        typer.echo(json.dumps(asdict(gen)))
    else:
        typer.echo(prompt + (gen.text or ""))


def answer(engine, tok, messages: list[dict], cfg) -> str:
    """One assistant reply through the one template (`fit_for_reply`), stopping at eot."""
    from lmlab.text.chat import fit_for_reply

    ids, cap = fit_for_reply(tok, messages, engine.model_cfg.seq_len, cfg.max_new_tokens)
    (gen,) = engine.generate([ids], replace(cfg, max_new_tokens=cap))
    return tok.decode(gen.tokens, skip_special=True).strip()


def chat_command(
    ckpt: CkptOpt,
    system: Annotated[str | None, typer.Option("--system", help="System prompt text.")] = None,
    system_file: Annotated[
        Path | None, typer.Option("--system-file", help="File holding the system prompt.")
    ] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="Answer this once and exit (for scripts).")
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option("--max-new-tokens", help="Reply length cap (default: min(256, context/2))."),
    ] = None,
    temperature: TempOpt = 0.8,
    top_k: TopKOpt = 50,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = 42,
    kv_policy: PolicyOpt = "full",
    kv_budget: BudgetOpt = 1.0,
    device: DeviceOpt = "cpu",
) -> None:
    """Chat with a trained model through the same template SFT trained on.

    Stops at <|eot|>, never generates role tokens, and drops the oldest turns when the history
    outgrows the context. Type /exit (or Ctrl-D) to leave, /reset to forget the history.

    Example: lmlab chat --ckpt runs/smoke-sft-1a2b3c4d --prompt "What colour is the cat?"
    """
    from lmlab.model.engine import GenerationConfig
    from lmlab.text.chat import role_token_ids

    if system_file is not None:
        if system is not None:
            raise LmlabError("--system and --system-file both give a system prompt; pass one")
        if not system_file.is_file():
            raise LmlabError(f"--system-file not found: {system_file}")
        system = system_file.read_text(encoding="utf-8").strip()
    engine, tok, model_cfg = _load(ckpt, device)
    if max_new_tokens is None:
        max_new_tokens = min(256, model_cfg.seq_len // 2)
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop_tokens=[tok.eot_id],
        banned_tokens=role_token_ids(tok),
        kv_policy=kv_policy,
        kv_budget=kv_budget,
    )
    head = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        typer.echo(answer(engine, tok, [*head, {"role": "user", "content": prompt}], cfg))
        return
    history: list[dict] = []
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            history = []
            continue
        if not line.strip():
            continue
        try:
            reply = answer(engine, tok, [*head, *history, {"role": "user", "content": line}], cfg)
        except LmlabError as e:  # e.g. a message longer than the context: say so, keep the session
            print(f"error: {e}", file=sys.stderr)
            continue
        history += [{"role": "user", "content": line}, {"role": "assistant", "content": reply}]
        cfg.seed += 1  # a new sample each turn, still reproducible
        typer.echo(f"bot> {reply}" if interactive else reply)
