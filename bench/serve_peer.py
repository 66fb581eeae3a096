"""`lmlab serve` against `transformers serve --continuous-batching` on the same exported weights.

    .venv/bin/python bench/serve_peer.py [--rounds 2] [--clients 32] [--threads N]

The checkpoint of `serve.py` (bench shape, random weights, a BPE tokenizer) is exported with
`lmlab export --format hf` (transformers loads it as `NanoChatForCausalLM`, no remote code), and
both servers get the same load: C concurrent streaming clients, each sending text prompts of 64
tokens for 32 new tokens at temperature 0.8, text because `transformers serve` takes no token-id
prompts. Generated tokens are counted from each server's `usage` when it sends one, else from its
text chunks; tokens/s (the issue's measure) and requests/s are reported with the paired ratio
lmlab / transformers per round (rounds alternate which server goes first). Needs `accelerate`
(`transformers serve` requires it). Writes bench/results-serve-peer.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import serve  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_transformers(hf_dir: Path, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    cmd = [str(exe), "serve", str(hf_dir), "--continuous-batching", "--port", str(port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("transformers serve did not answer /health")


def bodies(model: str, texts: list[str], lmlab: bool) -> list[dict]:
    extra = {"ignore_eos": True} if lmlab else {}  # transformers serve has no such field
    return [serve.completion_body(t, k % 2, model=model, **extra) for k, t in enumerate(texts)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(common.ROOT / "bench" / "results-serve-peer.json"))
    args = ap.parse_args(argv)
    from lmlab.interop.export import export_hf
    from lmlab.text.tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        run = serve.build_checkpoint(Path(tmp))
        hf_dir = export_hf(run, Path(tmp) / "hf")
        tok = load_tokenizer(run / "tokenizer")
        rng = random.Random(0)
        texts = [tok.decode([rng.randrange(8, tok.vocab_size) for _ in range(serve.PROMPT_TOKENS)])
                 for _ in range(args.clients * 2)]  # fmt: skip
        servers = {
            "lmlab": (*serve.start_server(run, 32, args.threads), run.name),
            "transformers": (*start_transformers(hf_dir, args.threads), str(hf_dir)),
        }
        samples: dict[str, list[dict]] = {n: [] for n in servers}
        try:
            for name, (_, url, model) in servers.items():  # warm-up
                asyncio.run(serve.run_clients(url, bodies(model, texts[:2], name == "lmlab"), 2))
            for r in range(args.rounds):
                order = list(servers) if r % 2 == 0 else list(servers)[::-1]
                for name in order:
                    _, url, model = servers[name]
                    load = bodies(model, texts, name == "lmlab")
                    res = asyncio.run(serve.run_clients(url, load, args.clients))
                    samples[name].append(res)
                    print(f"round {r} {name:>12}: {res['tokens_per_s']:7.1f} tok/s "
                          f"{res['requests_per_s']:5.2f} req/s, {res['mean_new_tokens']:.1f} new "
                          f"tokens/request, ttft p50 {res['ttft_p50_s'] * 1000:.0f} ms", flush=True)  # fmt: skip
        finally:
            for proc, _, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
    ratio = common.paired_ratio(
        [x["tokens_per_s"] for x in samples["lmlab"]],
        [x["tokens_per_s"] for x in samples["transformers"]],
    )
    out = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "clients": args.clients,
        "loadavg_after": os.getloadavg(),
        "ratio_tokens_per_s": ratio,
        "samples": samples,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"lmlab / transformers serve, tokens/s at {args.clients} clients: {ratio:.2f}x")
    return out


if __name__ == "__main__":
    main()
