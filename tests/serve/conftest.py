"""A tiny checkpoint (random GPT + a BPE tokenizer trained here) served by real uvicorn servers
on 127.0.0.1 ephemeral ports, in background threads of the test process."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from lmlab.model.checkpoint import load_checkpoint, save_checkpoint
from lmlab.model.config import ModelConfig
from lmlab.model.gpt import GPT

CONTEXT = 128
WORDS = "the cat sat on a mat and the dog ran to the red ball while birds sang in trees".split()


def build_run(root: Path, name: str = "tiny-serve", context: int = CONTEXT) -> Path:
    """A run directory as `lmlab train` writes it: checkpoints/latest + tokenizer/."""
    from lmlab.text import hf_backend

    run = root / name
    gen = torch.Generator().manual_seed(0)
    docs = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (40,), generator=gen))
            for _ in range(200)]  # fmt: skip
    tok = hf_backend.train_bpe(docs, 320, progress=False)
    tok.save(run / "tokenizer")
    cfg = ModelConfig(depth=2, n_embd=32, n_head=4, n_kv_head=2, vocab_size=tok.vocab_size,
                      seq_len=context)  # fmt: skip
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:  # random (not zero-init) weights: every position matters
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    arch = model.arch() if hasattr(model, "arch") else {"class": "gpt", "config": cfg.model_dump()}
    meta = {"arch": arch, "model": cfg.model_dump(mode="json"), "tokenizer": tok.meta()}
    save_checkpoint(run / "checkpoints" / "latest", model, meta)
    return run


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app):
        import uvicorn

        from lmlab.serve.cli import bind

        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)  # fmt: skip
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)

    def client(self, api_key: str = "none", **kw):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, **kw)

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve(run: Path, **settings) -> LiveServer:
    from lmlab.model.engine import Engine
    from lmlab.serve.app import Settings, create_app

    model, tok, _ = load_checkpoint(run)
    return LiveServer(create_app(Engine(model, tok), tok, run.name, Settings(**settings)))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="session")
def server(tiny_run):
    s = serve(tiny_run, max_batch=32, max_queue=256)
    yield s
    s.close()


@pytest.fixture(scope="session")
def client(server):
    return server.client()


@pytest.fixture(scope="session")
def tok(tiny_run):
    from lmlab.model.checkpoint import load_tokenizer_for

    return load_tokenizer_for(tiny_run)


@pytest.fixture(scope="session")
def model_id(tiny_run) -> str:
    return tiny_run.name


@pytest.fixture(scope="session")
def reference(tiny_run):
    """An engine and model of their own (the server's live in its scheduler thread)."""
    from lmlab.model.engine import Engine

    model, tok, _ = load_checkpoint(tiny_run)
    return Engine(model.eval(), tok)


def forward_logprobs(engine, ids: list[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) for t >= 1, from one plain forward pass."""
    with torch.no_grad():
        logits = engine.model(torch.tensor([ids]))[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return [logp[t - 1, ids[t]].item() for t in range(1, len(ids))]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The servers share this process: with one intra-op thread a loaded 2-core machine does not
    stall every op at an OpenMP barrier (restored after each test, for the rest of the suite)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
