"""`lmlab serve`: an OpenAI-compatible HTTP server over a checkpoint (FastAPI + uvicorn)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from lmlab.cli_common import DeviceOpt
from lmlab.errors import LmlabError


def model_name_for(ckpt: Path) -> str:
    """The run's name: <run>/checkpoints/<tag> and <run> both give <run>'s folder name."""
    ckpt = ckpt.resolve()
    return ckpt.parent.parent.name if ckpt.parent.name == "checkpoints" else ckpt.name


def bind(host: str, port: int) -> socket.socket:
    """Bind first, so that port 0 works and the real address can be printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise LmlabError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve_command(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Run directory or checkpoint directory.")],
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (0.0.0.0 exposes it to the network).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0 = any free port).")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="LMLAB_API_KEY",
            help="Require 'Authorization: Bearer KEY' (or set LMLAB_API_KEY, kept out of `ps`).",
            show_default=False,
        ),
    ] = None,
    max_batch: Annotated[
        int, typer.Option("--max-batch", help="Rows decoded together (1 = one at a time).")
    ] = 32,
    max_queue: Annotated[
        int, typer.Option("--max-queue", help="Waiting requests before answering 429.")
    ] = 256,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds a request may take before it is dropped.")
    ] = 600.0,
    max_body_kb: Annotated[
        int, typer.Option("--max-body-kb", help="Largest request body accepted (413 above).")
    ] = 4096,
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="Model id clients send (default: run name).")
    ] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Serve a checkpoint over the OpenAI API, with continuous batching and per-request KV budgets.

    Example: lmlab serve --ckpt runs/smoke-sft-1a2b3c4d --port 8000 --max-batch 32
    """
    import uvicorn

    from lmlab.device import pick_device
    from lmlab.model.checkpoint import load_checkpoint
    from lmlab.model.engine import Engine
    from lmlab.serve.app import Settings, create_app

    for name, value in (("--max-batch", max_batch), ("--max-queue", max_queue),
                        ("--max-body-kb", max_body_kb)):  # fmt: skip
        if value < 1:
            raise LmlabError(f"{name} must be >= 1, got {value}")
    if timeout <= 0:
        raise LmlabError(f"--timeout must be > 0, got {timeout}")
    model, tok, _ = load_checkpoint(ckpt, pick_device(device))
    settings = Settings(api_key or None, max_batch, max_queue, max_body_kb * 1024, timeout)
    name = model_name or model_name_for(ckpt)
    app = create_app(Engine(model, tok), tok, name, settings)
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(
        f"serving {name} on http://{shown}:{sock.getsockname()[1]}/v1 "
        f"(max batch {max_batch}, queue {max_queue}, key {'required' if api_key else 'off'})",
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
