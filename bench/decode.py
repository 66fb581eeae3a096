"""Decode throughput with the KV cache: lmlab `Engine.generate` vs HF `generate`, same weights.

The HF Llama is randomly initialised and its weights are copied into an lmlab GPT configured as
Llama, so both compute the same function (the benchmark reports how often their greedy tokens
agree). Greedy, KV cache on, eos disabled: every row generates exactly NEW tokens after a
PROMPT-token prompt. Peers:
  lmlab-engine  Engine(gpt).generate(prompts, GenerationConfig(max_new_tokens=N, temperature=0))
  hf-generate   hf.generate(ids, max_new_tokens=N, do_sample=False, use_cache=True)
  hf-loop       a hand-written greedy loop over hf(...) with a DynamicCache: HF's model without
                generate()'s bookkeeping (shows how much of any gap is generate() itself)
Decode time is the time from the first generated token to the last, i.e. the N - 1 cached
single-token steps after the prefill: the engine's own `decode_s` (which also includes choosing the
first token, so it slightly favours the peers), a streamer's timestamps for hf-generate, and clock
reads inside the loop for hf-loop. Decode tokens/s = B * (N - 1) / decode time.
"""

from __future__ import annotations

import common  # bench/ is on sys.path: run as a script, or imported by run_all.py
import torch

from lmlab.model.engine import Engine, GenerationConfig

PROMPT = 128
NEW = 64
BATCHES = (1, 8)
REPEATS = 8
BUDGET_S = 100.0  # both batch sizes together; at least 3 rounds each whatever the load


class _Stamps:
    """A `generate` streamer that records when the first and the last new token arrive."""

    def __init__(self):
        self.puts: list[float] = []

    def put(self, value) -> None:
        self.puts.append(common.clock())

    def end(self) -> None:
        pass


def _lmlab(engine: Engine, prompts: list[list[int]], new: int) -> tuple[list[list[int]], float]:
    gens = engine.generate(prompts, GenerationConfig(max_new_tokens=new, temperature=0.0))
    return [g.tokens for g in gens], max(g.decode_s for g in gens)


def _hf_generate(hf, ids: torch.Tensor, new: int) -> tuple[list[list[int]], float]:
    stamps = _Stamps()
    out = common.hf_greedy(hf, ids, new, streamer=stamps)
    # puts: the prompt, then one per new token
    return out.tolist(), stamps.puts[-1] - stamps.puts[1]


@torch.inference_mode()
def _hf_loop(hf, ids: torch.Tensor, new: int) -> tuple[list[list[int]], float]:
    from transformers import DynamicCache

    cache = DynamicCache(config=hf.config)
    out = hf(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    tokens = [out.logits[:, -1].argmax(dim=-1)]
    t0 = common.clock()
    for _ in range(new - 1):
        out = hf(input_ids=tokens[-1][:, None], past_key_values=cache, use_cache=True)
        tokens.append(out.logits[:, -1].argmax(dim=-1))
    return torch.stack(tokens, dim=1).tolist(), common.clock() - t0


def _sample(peer: tuple, name: str, batch: int, new: int, tokens: dict) -> float:
    """One timed generation; keeps its tokens; returns decode tokens/s."""
    fn, model, inputs = peer
    toks, decode_s = fn(model, inputs, new)
    tokens[name] = toks
    return batch * (new - 1) / decode_s


def main(
    repeats: int = REPEATS,
    batches=BATCHES,
    prompt: int = PROMPT,
    new: int = NEW,
    budget_s: float = BUDGET_S,
) -> dict:
    cfg = common.lmlab_llama_config(seq_len=max(common.SEQ_LEN, prompt + new))
    hf = common.hf_llama(cfg, seed=0)
    gpt = common.lmlab_from_hf(cfg, hf)
    engine = Engine(gpt)
    gen = torch.Generator().manual_seed(0)
    results: dict = {
        "prompt": prompt,
        "new_tokens": new,
        "params": gpt.num_params(),
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "batch": {},
    }
    rows = []
    for batch in batches:
        ids = torch.randint(0, cfg.vocab_size, (batch, prompt), generator=gen)
        prompts = ids.tolist()
        peers = {
            "lmlab-engine": (_lmlab, engine, prompts),
            "hf-generate": (_hf_generate, hf, ids),
            "hf-loop": (_hf_loop, hf, ids),
        }
        for fn, model, inputs in peers.values():  # warm-up: allocations, first-call costs
            fn(model, inputs, 8)
        tokens: dict[str, list[list[int]]] = {}
        runs = {
            name: (lambda peer=peer, name=name, b=batch, t=tokens: _sample(peer, name, b, new, t))
            for name, peer in peers.items()
        }
        samples = common.interleaved(runs, repeats, warmup=0, budget_s=budget_s / len(batches))
        assert all(len(r) == new for t in tokens.values() for r in t), "a peer stopped early"
        same = [
            a == b
            for ra, rb in zip(tokens["lmlab-engine"], tokens["hf-generate"], strict=True)
            for a, b in zip(ra, rb, strict=True)
        ]
        entry: dict = {"greedy_token_agreement": sum(same) / len(same), "peers": {}}
        for name in peers:
            tps = common.median(samples[name])
            paired = common.paired_ratio(samples[name], samples["hf-generate"])
            entry["peers"][name] = {
                "decode_tokens_per_s": tps,
                "samples": samples[name],
                "spread": common.spread(samples[name]),
                "vs_hf_generate": paired,
            }
            rows.append([batch, name, tps, f"{paired:.2f}x", f"{common.spread(samples[name]):.0%}"])
        entry["ratio_vs_hf_generate"] = entry["peers"]["lmlab-engine"]["vs_hf_generate"]
        entry["ratio_vs_hf_loop"] = common.paired_ratio(samples["lmlab-engine"], samples["hf-loop"])
        entry["rounds"] = len(samples["hf-generate"])
        entry["other_processes_cores"] = common.median(samples.round_contention())
        entry["contended"] = common.contended(entry["other_processes_cores"])
        results["batch"][str(batch)] = entry
    print(
        f"decode: prompt {prompt}, {new} new tokens, greedy, fp32, "
        f"{gpt.num_params() / 1e6:.1f}M params (Llama-shaped, identical weights)"
    )
    print(common.table(["B", "peer", "decode tok/s", "vs HF generate", "spread"], rows))
    for b, e in results["batch"].items():
        print(f"B={b}: greedy tokens agree with HF on {e['greedy_token_agreement']:.0%}")
    return results


if __name__ == "__main__":
    main()
