"""`lmlab serve` under load: continuous batching vs the same server taking one request at a time.

    .venv/bin/python bench/serve.py                  # ~3-5 minutes on 2 cores
    .venv/bin/python bench/serve.py --quick          # 1 round, fewer requests: a smoke check
    .venv/bin/python bench/serve.py --threads 1 --out bench/results-serve-1thread.json

Two `lmlab serve` subprocesses over the same checkpoint (the bench shape of `common.py`, random
weights, a BPE tokenizer trained on this repository's text): `--max-batch 32` and `--max-batch 1`.
For 1, 8 and 32 concurrent clients (asyncio + httpx, streaming, so time to first token is seen by
the client), each client sends prompts of 64 random tokens for 32 new tokens (`ignore_eos`, so
every request costs the same) at temperature 0.8. Rounds alternate which server goes first.
Reported: requests/s, generated tokens/s, p50/p95 time to first token, and the ratio
batched / one-at-a-time per round (median over rounds). Writes bench/results-serve.json.

The HF peer (`transformers serve --continuous-batching` on the exported weights) is
`bench/serve_peer.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PROMPT_TOKENS, NEW_TOKENS = 64, 32
LEVELS = (1, 8, 32)


def build_checkpoint(root: Path) -> Path:
    from lmlab.model.checkpoint import save_checkpoint
    from lmlab.model.config import ModelConfig
    from lmlab.model.gpt import GPT
    from lmlab.text import hf_backend

    run = root / "bench-serve"
    docs = [p.read_text(encoding="utf-8") for p in sorted(common.ROOT.glob("lmlab/**/*.py"))]
    tok = hf_backend.train_bpe(docs, 2048, progress=False)
    tok.save(run / "tokenizer")
    cfg = ModelConfig(depth=common.DEPTH, n_embd=common.WIDTH, n_head=common.HEADS,
                      vocab_size=tok.vocab_size, seq_len=common.SEQ_LEN)  # fmt: skip
    torch.manual_seed(0)
    model = GPT(cfg)
    meta = {"model": cfg.model_dump(mode="json"), "tokenizer": tok.meta()}
    if hasattr(model, "arch"):
        meta["arch"] = model.arch()
    save_checkpoint(run / "checkpoints" / "latest", model, meta)
    return run


def start_server(run: Path, max_batch: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "lmlab", "serve", "--ckpt", str(run), "--port", "0",
           "--max-batch", str(max_batch), "--max-queue", "1024"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:  # torch reads it at start: fewer OpenMP threads = steadier timings under load
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    m = re.search(r"(http://\S+)/v1", line)
    if not m:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    url = m.group(1)
    for _ in range(400):
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit("server did not answer /health")


async def one_request(http: httpx.AsyncClient, url: str, body: dict) -> tuple[float, int]:
    """(time to the first text chunk, generated tokens: the server's usage, else its chunks)."""
    t0 = time.perf_counter()
    ttft, chunks, usage = None, 0, None
    async with http.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {await r.aread()!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                usage = chunk["usage"].get("completion_tokens")
    return (ttft if ttft is not None else time.perf_counter() - t0), (usage or chunks)


async def run_clients(url: str, bodies: list[dict], clients: int) -> dict:
    """`clients` concurrent clients, each sending its share of `bodies` one after another."""
    per_client = len(bodies) // clients
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:

        async def client(c: int):
            return [await one_request(http, url, bodies[c * per_client + k])
                    for k in range(per_client)]  # fmt: skip

        t0 = time.perf_counter()
        done = await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - t0
    results = [x for per in done for x in per]
    ttfts = sorted(t for t, _ in results)
    return {
        "requests": len(results),
        "wall_s": wall,
        "requests_per_s": len(results) / wall,
        "tokens_per_s": sum(n for _, n in results) / wall,
        "mean_new_tokens": statistics.fmean(n for _, n in results),
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p95_s": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
    }


def completion_body(prompt, seed: int, **extra) -> dict:
    return {"prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0.8, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}, **extra}  # fmt: skip


async def load(url: str, clients: int, per_client: int, vocab: int, seed: int) -> dict:
    rng = random.Random(seed)
    bodies = [completion_body([rng.randrange(8, vocab) for _ in range(PROMPT_TOKENS)], seed + k % per_client,
                              ignore_eos=True)
              for k in range(clients * per_client)]  # fmt: skip
    return await run_clients(url, bodies, clients)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one round, fewer requests")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of each server")
    ap.add_argument("--out", default=str(common.ROOT / "bench" / "results-serve.json"))
    args = ap.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        run = build_checkpoint(Path(tmp))
        from lmlab.text.tokenizer import load_tokenizer

        vocab = load_tokenizer(run / "tokenizer").vocab_size
        servers = {
            "batched": start_server(run, 32, args.threads),
            "one-at-a-time": start_server(run, 1, args.threads),
        }
        load_before = os.getloadavg()
        samples: dict[str, dict[int, list[dict]]] = {n: {c: [] for c in LEVELS} for n in servers}
        try:
            for _, url in servers.values():  # warm-up: first calls pay for lazy init
                asyncio.run(load(url, 2, 1, vocab, 99))
            for r in range(rounds):
                for clients in LEVELS:
                    per_client = max(1, (8 if args.quick else 16) // clients) * (
                        2 if clients > 1 else 1
                    )
                    order = list(servers) if (r + clients) % 2 == 0 else list(servers)[::-1]
                    for name in order:
                        res = asyncio.run(load(servers[name][1], clients, per_client, vocab, r))
                        samples[name][clients].append(res)
                        print(f"round {r} {name:>13} {clients:>2} clients: "
                              f"{res['requests_per_s']:6.2f} req/s {res['tokens_per_s']:7.1f} tok/s "
                              f"ttft p50 {res['ttft_p50_s'] * 1000:6.0f} ms", flush=True)  # fmt: skip
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
    table = summarize(samples)
    out = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "server_threads": args.threads or torch.get_num_threads(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },  # fmt: skip
        "shape": {
            "prompt_tokens": PROMPT_TOKENS,
            "new_tokens": NEW_TOKENS,
            "width": common.WIDTH,
            "depth": common.DEPTH,
            "seq_len": common.SEQ_LEN,
        },  # fmt: skip
        "summary": table,
        "samples": samples,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print_table(table)
    return out


def summarize(samples) -> dict:
    table = {}
    for clients in LEVELS:
        b, s = samples["batched"][clients], samples["one-at-a-time"][clients]
        row = {}
        for name, runs in (("batched", b), ("one_at_a_time", s)):
            row[name] = {k: statistics.median(x[k] for x in runs)
                         for k in ("requests_per_s", "tokens_per_s", "ttft_p50_s", "ttft_p95_s")}  # fmt: skip
        row["ratio_requests_per_s"] = common.paired_ratio(
            [x["requests_per_s"] for x in b], [x["requests_per_s"] for x in s]
        )
        table[str(clients)] = row
    return table


def print_table(table: dict) -> None:
    print("\n| clients | server | req/s | tok/s | TTFT p50 | TTFT p95 | req/s ratio |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for clients, row in table.items():
        for name in ("batched", "one_at_a_time"):
            x = row[name]
            ratio = f"{row['ratio_requests_per_s']:.2f}x" if name == "batched" else ""
            print(f"| {clients} | {name.replace('_', '-')} | {x['requests_per_s']:.2f} | "
                  f"{x['tokens_per_s']:.0f} | {x['ttft_p50_s'] * 1000:.0f} ms | "
                  f"{x['ttft_p95_s'] * 1000:.0f} ms | {ratio} |")  # fmt: skip


if __name__ == "__main__":
    main()
