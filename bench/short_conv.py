"""What `model.short_conv` costs: the same lmlab GPT with and without the short convolution.

Peers, measured side by side in rotating rounds (common.interleaved):
  training  forward + backward + AdamW step, tokens/s, for two shapes:
            bench  the shared bench shape (width 256, 8 layers, T=256, batch 8; lmlab-default)
            demo   the retrieval demo's model (width 128, 2 layers, one head of 128, MLP x1,
                   tied, T=256, batch 32)
  decode    Engine.generate, greedy, 128-token prompts, 64 new tokens, batch 8, bench shape
The peer of `short_conv=4` is the same config with `short_conv=0` (same weights elsewhere for
decode), so each ratio isolates the convolution (and, for decode, its per-row state).
"""

from __future__ import annotations

import common  # bench/ is on sys.path: run as a script, or imported by run_all.py
import torch

from lmlab.config import load_file
from lmlab.model.config import ModelConfig
from lmlab.model.engine import Engine, GenerationConfig
from lmlab.model.gpt import GPT
from lmlab.studies.retrieval.spec import PROFILE_DIR

KERNEL = 4
REPEATS = 8
BUDGET_S = 60.0
PROMPT, NEW, DECODE_BATCH = 128, 64, 8


def demo_config() -> ModelConfig:
    """The retrieval demo recipe's model, read from its profile (vocabulary of the demo's data)."""
    model = load_file(PROFILE_DIR / "kv-demo.yaml")["model"]
    return ModelConfig(**model, vocab_size=265)


def _train_sample(model: GPT, data: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    x, y = data[:, :-1], data[:, 1:]

    def sample() -> float:
        t0 = common.clock()
        model(x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return x.numel() / (common.clock() - t0)

    return sample


def _decode_sample(engine: Engine, prompts: list[list[int]]):
    def sample() -> float:
        gens = engine.generate(prompts, GenerationConfig(max_new_tokens=NEW, temperature=0.0))
        return len(prompts) * (NEW - 1) / max(g.decode_s for g in gens)

    return sample


def main(repeats: int = REPEATS, budget_s: float = BUDGET_S) -> dict:
    torch.manual_seed(0)
    bench = common.lmlab_default_config()
    shapes = {
        "bench": (bench, 8),
        "demo": (demo_config(), 32),
    }
    runs = {}
    for shape, (cfg, batch) in shapes.items():
        data = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len + 1))
        for k in (0, KERNEL):
            model = GPT(cfg.model_copy(update={"short_conv": k})).train()
            runs[f"train-{shape}-k{k}"] = _train_sample(model, data)
    plain = GPT(bench.model_copy(update={"seq_len": PROMPT + NEW})).eval()
    conv = GPT(bench.model_copy(update={"seq_len": PROMPT + NEW, "short_conv": KERNEL})).eval()
    conv.load_state_dict(plain.state_dict(), strict=False)  # same weights but the conv taps
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, bench.vocab_size, (DECODE_BATCH, PROMPT), generator=gen).tolist()
    runs["decode-k0"] = _decode_sample(Engine(plain), prompts)
    runs[f"decode-k{KERNEL}"] = _decode_sample(Engine(conv), prompts)

    samples = common.interleaved(runs, repeats, warmup=1, budget_s=budget_s)
    results: dict = {
        "kernel": KERNEL,
        "rounds": len(samples["decode-k0"]),
        "threads": torch.get_num_threads(),
        "other_processes_cores": common.median(samples.round_contention()),
        "peers": {n: {"tokens_per_s": common.median(s), "samples": s} for n, s in samples.items()},
    }
    rows = []
    for what in ("train-bench", "train-demo", "decode"):
        ours, theirs = samples[f"{what}-k{KERNEL}"], samples[f"{what}-k0"]
        ratio = common.paired_ratio(ours, theirs)
        results[f"{what}_ratio"] = ratio
        rows.append([what, common.median(theirs), common.median(ours), f"{ratio:.3f}x"])
    results["contended"] = common.contended(results["other_processes_cores"])
    print(f"short_conv={KERNEL} vs none, {results['rounds']} rounds (tokens/s, median)")
    print(common.table(["measure", "short_conv=0", f"short_conv={KERNEL}", "ratio"], rows))
    return results


if __name__ == "__main__":
    main()
