"""Training throughput: lmlab GPT vs HF `LlamaForCausalLM`, forward + backward + AdamW step.

Three peers of the same width, depth, heads, vocabulary and sequence length, all fp32 on CPU,
all stepped by the same plain `torch.optim.AdamW`:
  lmlab-default  lmlab's own architecture (ReLU^2 MLP 4x, QK-norm, embedding norm, softcap)
  lmlab-llama    lmlab configured as Llama (SwiGLU 768, RMSNorm gains, nothing else)
  hf-llama       transformers.LlamaForCausalLM with exactly lmlab-llama's shapes (SDPA attention)
lmlab-llama vs hf-llama isolates the implementation (same FLOPs); lmlab-default vs hf-llama adds
the architecture difference. MFU = model FLOPs per token (lmlab's estimate: 6 * non-embedding
parameters + attention) * tokens/s / this process's measured fp32 matmul peak.
"""

from __future__ import annotations

import common  # bench/ is on sys.path: run as a script, or imported by run_all.py
import torch

from lmlab.model.gpt import GPT

BATCH = 8
STEPS_PER_SAMPLE = 1  # optimizer steps timed together as one measurement
REPEATS = 8
BUDGET_S = 100.0  # stop adding rounds after this long (at least 3 rounds whatever the load)


def _stepper(name: str, model: torch.nn.Module, data: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    model.train()
    x, y = data[:, :-1], data[:, 1:]
    hf = name.startswith("hf")
    bf16 = name.endswith("+bf16")

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if hf:
                loss = model(input_ids=x, labels=x, use_cache=False).loss
            else:
                loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sample() -> float:
        t0 = common.clock()
        for _ in range(STEPS_PER_SAMPLE):
            step()
        return STEPS_PER_SAMPLE * x.numel() / (common.clock() - t0)

    return sample


def main(
    repeats: int = REPEATS,
    batch: int = BATCH,
    seq_len: int = common.SEQ_LEN,
    budget_s: float = BUDGET_S,
    compile: bool = False,
    bf16: bool = False,
) -> dict:
    """compile=True adds the three peers again under torch.compile (lmlab's `compile: true`; HF
    compiled the same way): ~1-3 minutes of compilation each on this machine, so it is opt-in.
    bf16=True adds the two lmlab peers under bf16 autocast (reported apart: the goal is fp32)."""
    torch.manual_seed(0)
    llama_cfg = common.lmlab_llama_config(seq_len)
    default_cfg = common.lmlab_default_config(seq_len)
    models = {
        "lmlab-default": (GPT(default_cfg), default_cfg),
        "lmlab-llama": (GPT(llama_cfg), llama_cfg),
        "hf-llama": (common.hf_llama(llama_cfg), llama_cfg),
    }
    if compile:
        models["lmlab-default+compile"] = (torch.compile(GPT(default_cfg)), default_cfg)
        models["lmlab-llama+compile"] = (torch.compile(GPT(llama_cfg)), llama_cfg)
        models["hf-llama+compile"] = (torch.compile(common.hf_llama(llama_cfg)), llama_cfg)
    if bf16:
        models["lmlab-default+bf16"] = (GPT(default_cfg), default_cfg)
        models["lmlab-llama+bf16"] = (GPT(llama_cfg), llama_cfg)
    data = torch.randint(0, common.VOCAB, (batch, seq_len + 1))
    peak_before = common.matmul_peak()
    runs = {name: _stepper(name, m, data) for name, (m, _) in models.items()}
    compile_s = {}
    for name, run in runs.items():  # the first step of a compiled peer is its compilation
        if name.endswith("+compile"):
            t0 = common.clock()
            run()
            compile_s[name] = common.clock() - t0
    samples = common.interleaved(runs, repeats, warmup=1, budget_s=budget_s)
    peak = max(peak_before, common.matmul_peak())

    results: dict = {
        "batch": batch,
        "seq_len": seq_len,
        "vocab": common.VOCAB,
        "width": common.WIDTH,
        "depth": common.DEPTH,
        "heads": common.HEADS,
        "dtype": "float32",
        "optimizer": "torch.optim.AdamW (same for every peer)",
        "matmul_peak_flops": peak,
        "rounds": len(samples["hf-llama"]),
        "other_processes_cores": common.median(samples.round_contention()),
        "threads": torch.get_num_threads(),
        "peers": {},
    }
    rows = []
    for name, (model, cfg) in models.items():
        tps = common.median(samples[name])
        flops = cfg.flops_per_token(seq_len)
        mfu = flops * tps / peak
        results["peers"][name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "flops_per_token": flops,
            "tokens_per_s": tps,
            "samples_tokens_per_s": samples[name],
            "spread": common.spread(samples[name]),
            "mfu": mfu,
            "vs_hf": common.paired_ratio(samples[name], samples["hf-llama"]),
        }
        if name.endswith("+compile"):
            results["peers"][name]["compile_s"] = compile_s[name]
            results["peers"][name]["vs_hf_compiled"] = common.paired_ratio(
                samples[name], samples["hf-llama+compile"]
            )
        rows.append(
            [name, f"{results['peers'][name]['params'] / 1e6:.2f}M", tps, f"{mfu:.1%}",
             f"{results['peers'][name]['vs_hf']:.2f}x", f"{common.spread(samples[name]):.0%}"]
        )  # fmt: skip
    results["contended"] = common.contended(results["other_processes_cores"])
    results["ratio_llama_vs_hf"] = results["peers"]["lmlab-llama"]["vs_hf"]
    results["ratio_default_vs_hf"] = results["peers"]["lmlab-default"]["vs_hf"]
    results["best_lmlab_mfu"] = max(
        results["peers"][n]["mfu"] for n in ("lmlab-default", "lmlab-llama")
    )
    print(
        f"training step (fwd+bwd+AdamW), B={batch} T={seq_len} fp32, "
        f"{results['rounds']} rounds, matmul peak {peak / 1e9:.0f} GFLOP/s"
    )
    print(common.table(["peer", "params", "tok/s", "MFU", "vs HF", "spread"], rows))
    return results


if __name__ == "__main__":
    main()
