"""Peak memory of a training step and of decode at T=2048 against the HF peer; the KV bytes a
budget keeps, measured on the cache's tensors.

Peak memory: every peer runs in a fresh process (`memory.py --peer NAME`), so no peer inherits
another's allocations or the allocator's free lists, and reports common.PeakMemory: the peak
resident set (VmHWM, reset after the baseline) minus the resident set at the baseline, which is
taken after imports, model build and inputs (on CUDA: max_memory_allocated minus
memory_allocated). On CPU every peer runs under two malloc settings (ALLOCATORS): glibc's default,
whose heap keeps freed blocks for reuse (what a user's process holds), and large blocks always
mmapped (what the tensors alive at the peak hold: steadier, and the fairer library comparison).
Peers:
  train:NAME   two optimizer steps (forward + backward + AdamW, the second with the optimizer
               state in place), B=8, T=256, fp32: lmlab-default, lmlab-llama, hf-llama
  decode:NAME  one PROMPT-token prompt, NEW new tokens, greedy, batch 1, context PROMPT + NEW:
               lmlab-llama through Engine.generate (kv_policy full; snapkv, h2o and
               streamingllm at budget 0.2) and HF generate. Both models (identical weights) are built in every decode process,
               so the baselines hold the same, and a short generation warms the peer up first.

KV bytes kept: for every policy x budget, one request through the engine's step-level batch
(`Engine.batch()`; the first step prefills, compresses and draws the first token), then the bytes
of the storages behind the cache's keys and values (`untyped_storage().nbytes()`), the slots they
hold and the slots still attendable, against the full cache; checked again at every decode step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import common  # bench/ is on sys.path: run as a script, or imported by run_all.py
import torch

from lmlab.model.engine import Engine, GenerationConfig, Request
from lmlab.model.gpt import GPT
from lmlab.model.kv import KV_POLICIES

BATCH, STEPS = 8, 2
PROMPT, NEW = 2048, 32
BUDGETS = (1.0, 0.5, 0.2, 0.1)
TRAIN_PEERS = ("lmlab-default", "lmlab-llama", "hf-llama")
DECODE_PEERS = ("lmlab-engine", *(f"lmlab-engine-{p}-0.2" for p in ("snapkv", "h2o", "streamingllm")),
                "hf-generate")  # fmt: skip
REPEATS = 2  # fresh processes per peer
BUDGET_S = 120.0  # no new round of processes after this long (at least one round)
MIB = 2**20
# glibc malloc as a user gets it, and with every block of 64 KiB or more mmapped (the threshold
# pinned, so it no longer grows): freed tensors then leave the resident set at once, and the peak
# follows the tensors alive rather than what the heap kept from earlier frees
ALLOCATORS = {"glibc default": {}, "mmap >= 64 KiB": {"MALLOC_MMAP_THRESHOLD_": "65536"}}


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _train_peer(name: str, device: str) -> dict:
    torch.manual_seed(0)
    cfg = common.lmlab_default_config() if name == "lmlab-default" else common.lmlab_llama_config()
    model = (common.hf_llama(cfg) if name == "hf-llama" else GPT(cfg)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    data = torch.randint(0, common.VOCAB, (BATCH, common.SEQ_LEN + 1), device=device)
    x, y = data[:, :-1], data[:, 1:]
    with common.PeakMemory(device) as mem:
        for _ in range(STEPS):
            common.train_step(model, opt, x, y, hf=name == "hf-llama")
    return _report(mem, params=sum(p.numel() for p in model.parameters()))


def _decode_peer(name: str, device: str) -> dict:
    cfg = common.lmlab_llama_config(seq_len=PROMPT + NEW)
    hf = common.hf_llama(cfg, seed=0).to(device)
    engine = Engine(common.lmlab_from_hf(cfg, hf).to(device))
    ids = torch.randint(0, cfg.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    gen_cfg = GenerationConfig(max_new_tokens=NEW)
    if name.count("-") == 3:  # lmlab-engine-POLICY-BUDGET
        _, _, gen_cfg.kv_policy, budget = name.split("-")
        gen_cfg.kv_budget = float(budget)

    @torch.inference_mode()
    def run(prompt: torch.Tensor, new: int) -> list[int]:
        if name.startswith("lmlab"):
            gen_cfg.max_new_tokens = new
            return engine.generate(prompt.tolist(), gen_cfg)[0].tokens
        return common.hf_greedy(hf, prompt.to(device), new)[0].tolist()

    run(ids[:, :64], 2)  # first-call costs (thread pools, kernel caches) stay out of the peak
    with common.PeakMemory(device) as mem:
        tokens = run(ids, NEW)
    return _report(mem, tokens=tokens)


def _report(mem: common.PeakMemory, **extra) -> dict:
    return {"peak_bytes": mem.bytes, "base_bytes": mem.base_bytes, "method": mem.method,
            "exact": mem.exact, "device": _device(), **extra}  # fmt: skip


def run_peer(peer: str) -> dict:
    """Measure one peer in this process (meant to be a fresh one): 'train:NAME' or 'decode:NAME'."""
    kind, name = peer.split(":", 1)
    return (_train_peer if kind == "train" else _decode_peer)(name, _device())


def _fresh_process(peer: str, threads: int, env: dict[str, str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peer", peer, "--threads", str(threads)]
    env = {**os.environ, **env}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory peer {peer} exited {done.returncode}: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _storage_bytes(*tensors: torch.Tensor | None) -> int:
    """Bytes of the distinct storages behind these tensors (a view counts its whole storage)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None:
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def kv_bytes_kept(engine: Engine, prompt: list[int], policy: str, budget: float) -> dict:
    """One request through the engine's running batch; the cache's real tensors after the first
    step (prefill + compression + first token) and at every decode step after it."""
    cfg = GenerationConfig(max_new_tokens=NEW, kv_policy=policy, kv_budget=budget)
    batch = engine.batch()
    handle = batch.add(Request(prompt, cfg))
    batch.step()
    cache = batch.cache
    kv = _storage_bytes(cache.k, cache.v)
    other = _storage_bytes(cache.valid, cache.queries, *cache.conv_state.values())
    row = {
        "policy": policy,
        "budget": budget,
        "kv_bytes": kv,
        "other_cache_bytes": other,
        "slots": cache.k.shape[3],
        "attendable_per_layer": cache.retained_lengths()[0],
        "kv_bytes_max_during_decode": kv,
    }
    while batch.has_work:
        if batch.cache is not None:
            now = _storage_bytes(batch.cache.k, batch.cache.v)
            row["kv_bytes_max_during_decode"] = max(row["kv_bytes_max_during_decode"], now)
        batch.step()
    row["engine_kv_retained"] = handle.result.samples[0].kv_retained
    return row


def kv_section() -> dict:
    cfg = common.lmlab_llama_config(seq_len=PROMPT + NEW)
    # HF's random init (as kv_prefill.py): lmlab's zero-initialised projections attend uniformly
    engine = Engine(common.lmlab_from_hf(cfg, common.hf_llama(cfg, seed=0)).to(_device()))
    prompt = torch.randint(0, cfg.vocab_size, (PROMPT,), generator=torch.Generator().manual_seed(0))
    rows = [
        kv_bytes_kept(engine, prompt.tolist(), policy, budget)
        for policy in KV_POLICIES
        for budget in BUDGETS
    ]
    full = next(r["kv_bytes"] for r in rows if r["policy"] == "full" and r["budget"] == 1.0)
    per_slot = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * 4  # k and v, fp32, batch 1
    for r in rows:
        r["vs_full"] = r["kv_bytes"] / full
        kept = max(r["attendable_per_layer"])
        r["bytes_of_kept_positions"] = kept * per_slot
        r["bytes_of_kept_positions_plus_decode_room"] = (kept + NEW) * per_slot
    return {"prompt": PROMPT, "new_tokens": NEW, "bytes_per_slot": per_slot,
            "full_kv_bytes": full, "rows": rows}  # fmt: skip


def _peak_section(kind: str, names: tuple[str, ...], hf: str, repeats: int, deadline: float):
    """Every peer under every allocator setting, `repeats` fresh processes each (fewer past the
    deadline, at least one), in rotating order; medians, and each peer's ratio to `hf`."""
    allocators = ALLOCATORS if _device() == "cpu" else {"cuda caching allocator": {}}
    runs: dict[tuple[str, str], list[dict]] = {(a, n): [] for a in allocators for n in names}
    order = list(runs)
    for r in range(repeats):
        if r and common.clock() > deadline:
            break
        for alloc, name in order[r % len(order) :] + order[: r % len(order)]:
            env = allocators[alloc]
            runs[alloc, name].append(_fresh_process(f"{kind}:{name}", torch.get_num_threads(), env))
    out: dict[str, dict] = {a: {} for a in allocators}
    for (alloc, name), samples in runs.items():
        peaks = [s["peak_bytes"] / MIB for s in samples]
        out[alloc][name] = {"peak_mib": common.median(peaks), "samples_mib": peaks,
                            "base_mib": common.median([s["base_bytes"] / MIB for s in samples])}  # fmt: skip
        for extra in ("params", "tokens"):
            if extra in samples[0]:
                out[alloc][name][extra] = samples[0][extra]
    for peers in out.values():
        for p in peers.values():
            p["vs_hf"] = p["peak_mib"] / peers[hf]["peak_mib"]
    first = runs[order[0]][0]
    return {"allocators": out, "method": first["method"], "exact": first["exact"],
            "device": first["device"], "processes_per_peer": min(map(len, runs.values()))}  # fmt: skip


def main(repeats: int = REPEATS, budget_s: float = BUDGET_S) -> dict:
    deadline = common.clock() + budget_s
    train = _peak_section("train", TRAIN_PEERS, "hf-llama", repeats, deadline)
    train.update(batch=BATCH, seq_len=common.SEQ_LEN, steps=STEPS, dtype="float32")
    decode = _peak_section("decode", DECODE_PEERS, "hf-generate", repeats, deadline)
    decode.update(prompt=PROMPT, new_tokens=NEW, batch=1)
    peers = next(iter(decode["allocators"].values()))
    ours, hf = (peers[n]["tokens"] for n in ("lmlab-engine", "hf-generate"))
    decode["greedy_token_agreement"] = sum(a == b for a, b in zip(ours, hf, strict=True)) / NEW
    kv = kv_section()
    results = {"threads": torch.get_num_threads(), "train": train, "decode": decode, "kv": kv}

    allocs = list(train["allocators"])
    n = min(train["processes_per_peer"], decode["processes_per_peer"])
    print(f"peak memory above the baseline (MiB), {train['device']}, {train['method']}, "
          f"median of {n}+ fresh processes per peer")  # fmt: skip
    rows = []
    for kind, section in (("train", train), ("decode", decode)):
        for name in section["allocators"][allocs[0]]:
            cells = [section["allocators"][a][name] for a in allocs]
            rows.append([f"{kind} {name}", *(x for c in cells for x in (c["peak_mib"],
                         f"{c['vs_hf']:.2f}x")), cells[0]["base_mib"]])  # fmt: skip
    heads = [x for a in allocs for x in (f"peak, {a}", "vs HF")]
    print(common.table(["peer", *heads, "baseline"], rows))
    print(f"decode greedy tokens agree with HF on {decode['greedy_token_agreement']:.0%}")
    print(f"\nKV cache after a {PROMPT}-token prefill through the engine (storage bytes of k, v)")
    rows = [[r["policy"], r["budget"], max(r["attendable_per_layer"]), r["slots"],
             r["kv_bytes"] / MIB, f"{r['vs_full']:.3f}"] for r in kv["rows"]]  # fmt: skip
    print(common.table(["policy", "budget", "kept/layer", "slots", "KV MiB", "vs full"], rows))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="fresh processes per peer")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="no new round after")
    parser.add_argument("--peer", help=argparse.SUPPRESS)  # one measurement, in this process
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results-memory.json"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peer:
        print(json.dumps(run_peer(args.peer)))
    else:
        info = common.machine_info()
        results = {"machine": info, "memory": main(repeats=args.repeats, budget_s=args.budget_s)}
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
