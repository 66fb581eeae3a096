"""The engine now against the engine of an earlier commit, same weights, same process.

    python bench/engine_regression.py [REV]      # REV: a commit whose lmlab/model/engine.py
                                                 # ran `generate(prompts, cfg)` (default 280c2fc,
                                                 # the engine before it worked request by request)

Greedy generate (prefill + 64 new tokens) at the bench shape, batches 1 and 8, rounds alternating
which engine goes first; prints tokens/s, the median ratio new/old and whether the tokens agree.
The old engine runs on today's KVCache, whose interface it uses unchanged.
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # bench/ is on sys.path when run as a script
import torch

from lmlab.model.engine import Engine, GenerationConfig
from lmlab.model.gpt import GPT


def old_engine_module(rev: str):
    src = subprocess.run(
        ["git", "show", f"{rev}:lmlab/model/engine.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "old_engine.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_engine", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_engine"] = module
    spec.loader.exec_module(module)
    return module


def main(rev: str = "280c2fc", rounds: int = 7) -> None:
    old = old_engine_module(rev)
    cfg = common.lmlab_llama_config()
    torch.manual_seed(0)
    gpt = GPT(cfg).eval()
    for p in gpt.parameters():
        if p.ndim == 2:
            torch.nn.init.normal_(p, std=0.05)
    engines = {
        "old": (old.Engine(gpt), old.GenerationConfig(max_new_tokens=64)),
        "new": (Engine(gpt), GenerationConfig(max_new_tokens=64)),
    }
    gen = torch.Generator().manual_seed(0)
    for B in (1, 8):
        prompts = [
            torch.randint(0, cfg.vocab_size, (128,), generator=gen).tolist() for _ in range(B)
        ]
        speed: dict[str, list[float]] = {"old": [], "new": []}
        outputs = {}
        for r in range(rounds):
            for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
                engine, gcfg = engines[name]
                t0 = time.perf_counter()
                out = engine.generate(prompts, gcfg)
                dt = time.perf_counter() - t0
                outputs[name] = [g.tokens for g in out]
                if r:  # the first round warms up
                    speed[name].append(B * 64 / dt)
        o, n = statistics.median(speed["old"]), statistics.median(speed["new"])
        same = outputs["old"] == outputs["new"]
        print(
            f"B={B}: {rev} {o:.0f} tok/s, now {n:.0f} tok/s, now/{rev} {n / o:.3f}, same tokens {same}"
        )


if __name__ == "__main__":
    main(*sys.argv[1:2])
