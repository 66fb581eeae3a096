"""SnapKV at T=2048: prefill overhead and decode speed-up against the full KV cache.

One lmlab GPT (Llama-shaped, the shared width/depth, context PROMPT + NEW), one PROMPT-token
prompt, batch 1, greedy. Peers, all through `Engine.generate`:
  full          kv_policy="full"  (the engine still runs its one-shot compression: keep everything)
  snapkv-0.2    kv_policy="snapkv", kv_budget=0.2 (window 32, pooling kernel 7: the defaults)
and, as a reference point for the prefill only,
  forward       gpt(ids, last_only=True) without a KV cache (causal SDPA, no mask, no cache writes)
Prefill time is the engine's `prefill_s` (prefill forward + KV compression); decode tokens/s is
the engine's `decode_tokens_per_s`. Overhead = prefill(snapkv) / prefill(full) - 1, paired per
round.
"""

from __future__ import annotations

import common  # bench/ is on sys.path: run as a script, or imported by run_all.py
import torch

from lmlab.model.engine import Engine, GenerationConfig

PROMPT = 2048
NEW = 32
BUDGET = 0.2
REPEATS = 6
BUDGET_S = 80.0


def main(
    repeats: int = REPEATS,
    prompt: int = PROMPT,
    new: int = NEW,
    budget: float = BUDGET,
    budget_s: float = BUDGET_S,
) -> dict:
    cfg = common.lmlab_llama_config(seq_len=prompt + new)
    # HF's random init rather than lmlab's zero-initialised projections: attention is not uniform
    gpt = common.lmlab_from_hf(cfg, common.hf_llama(cfg, seed=0))
    engine = Engine(gpt)
    ids = torch.randint(0, cfg.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(0))
    prompts = ids.tolist()
    configs = {
        "full": GenerationConfig(max_new_tokens=new, kv_policy="full"),
        f"snapkv-{budget:g}": GenerationConfig(
            max_new_tokens=new, kv_policy="snapkv", kv_budget=budget
        ),
    }
    snap = f"snapkv-{budget:g}"
    last: dict = {}
    decode: dict[str, list[float]] = {name: [] for name in configs}

    def generate(name: str) -> float:
        (g,) = engine.generate(prompts, configs[name])
        last[name] = g
        decode[name].append(g.decode_tokens_per_s)
        return g.prefill_s

    def forward() -> float:
        t0 = common.clock()
        with torch.inference_mode():
            gpt(ids, last_only=True)
        return common.clock() - t0

    runs = {name: (lambda name=name: generate(name)) for name in configs}
    runs["forward"] = forward
    prefill = common.interleaved(runs, repeats, warmup=1, budget_s=budget_s)
    for name in configs:  # drop the warm-up's decode speeds
        decode[name] = decode[name][1:]

    inv = {name: [1.0 / t for t in prefill[name]] for name in prefill}  # prefills per second
    overhead = 1.0 / common.paired_ratio(inv[snap], inv["full"]) - 1.0
    mask_cost = 1.0 / common.paired_ratio(inv["full"], inv["forward"]) - 1.0
    speedup = common.paired_ratio(decode[snap], decode["full"])
    results: dict = {
        "prompt": prompt,
        "new_tokens": new,
        "batch": 1,
        "budget": budget,
        "params": gpt.num_params(),
        "rounds": len(prefill["full"]),
        "other_processes_cores": common.median(prefill.round_contention()),
        "threads": torch.get_num_threads(),
        "kv_retained_per_layer": {name: last[name].kv_retained[0] for name in configs},
        "peers": {},
        "snapkv_prefill_overhead": overhead,
        "snapkv_decode_speedup": speedup,
        "engine_prefill_vs_plain_forward": mask_cost,
    }
    results["contended"] = common.contended(results["other_processes_cores"])
    rows = []
    for name in runs:
        pre = common.median(prefill[name])
        tps = common.median(decode[name]) if name in decode else None
        results["peers"][name] = {
            "prefill_s": pre,
            "prefill_samples_s": prefill[name],
            "decode_tokens_per_s": tps,
            "decode_samples": decode.get(name),
        }
        kept = results["kv_retained_per_layer"].get(name, "-")
        rows.append([name, pre, "-" if tps is None else tps, kept])
    print(
        f"KV policy at T={prompt}: batch 1, {new} new tokens, "
        f"{gpt.num_params() / 1e6:.1f}M params, {results['rounds']} rounds"
    )
    print(common.table(["peer", "prefill s", "decode tok/s", "KV kept (layer 0)"], rows))
    print(
        f"snapkv prefill overhead {overhead:+.1%}, decode speed-up {speedup:.2f}x; "
        f"engine prefill (full) vs plain forward {mask_cost:+.0%}"
    )
    return results


if __name__ == "__main__":
    main()
