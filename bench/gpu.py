"""One-GPU benchmarks: bf16 training MFU, decode against HF generate, a 2-process DDP step.

    python bench/gpu.py                  # one CUDA GPU, under 5 minutes -> bench/results-gpu.json
    python bench/gpu.py --dry-run        # every section on CPU, tiny shapes, gloo (~30 s)

Sections, each guarded (an error is recorded in the JSON and the next section runs) and all
under one time budget (a section or a compiled peer that no longer fits is recorded as skipped):
  train   one optimizer step (forward + backward + AdamW, bf16 autocast, fp32 weights) at depth 12
          (width 768, 12 heads), T=1024, vocabulary 50304, batch sized to the GPU's memory:
          lmlab-default, lmlab-llama and HF Llama of lmlab-llama's shape, eager and under
          torch.compile (compile seconds recorded), in interleaved rounds (common.interleaved);
          MFU against the bf16 matmul peak measured in this process (and the datasheet peak)
  decode  Engine.generate vs HF generate, identical bf16 weights (common.lmlab_from_hf), greedy,
          128-token prompts, 128 new tokens, B=1 and 8. Decode tokens/s = B * (N - 1) / (time of
          N new tokens - time of 1), the same wall-clock measure for both peers
  ddp     2 processes (nccl; with one GPU both share it, or gloo when nccl refuses): step time,
          and gradients equal on both ranks and to one process's gradient of the same global batch
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import common  # bench/ is on sys.path: run as a script, or imported by run_all.py
import torch

from lmlab.model.config import ModelConfig
from lmlab.model.engine import Engine, GenerationConfig
from lmlab.model.gpt import GPT
from lmlab.train.mfu import measure_matmul_flops, peak_flops

BUDGET_S = 280.0
OUT = Path(__file__).resolve().parent / "results-gpu.json"
DRY_OUT = Path(tempfile.gettempdir()) / "lmlab-gpu-dry-run.json"  # not a GPU figure: not in bench/


@dataclass(frozen=True)
class Plan:
    device: str
    depth: int
    vocab: int
    seq: int
    batch: int
    steps_per_sample: int
    rounds: int
    prompt: int
    new: int
    decode_batches: tuple[int, ...]
    backend: str
    compile_backend: str
    matmul_n: int
    compile_s_guess: float  # no compile starts with less than this (plus the reserve) left


def make_plan(dry_run: bool) -> Plan:
    if dry_run:
        return Plan("cpu", 2, 256, 64, 2, 1, 1, 16, 32, (1, 8), "gloo", "eager", 256, 1.0)
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    batch = 16 if gib >= 60 else 8 if gib >= 30 else 4  # ~1 GiB of activations per sequence
    return Plan(
        "cuda", 12, 50304, 1024, batch, 3, 5, 128, 128, (1, 8), "nccl", "inductor", 8192, 60
    )


def configs(plan: Plan, seq_len: int) -> dict[str, ModelConfig]:
    default = ModelConfig(depth=plan.depth, vocab_size=plan.vocab, seq_len=seq_len)
    return {"lmlab-default": default, "lmlab-llama": common.llama_like(default)}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---- train ----------------------------------------------------------------------------------
def _trainer(model, hf: bool, data: torch.Tensor, plan: Plan):
    """(one step, one timed sample returning tokens/s) for `model`."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    x, y = data[:, :-1], data[:, 1:]

    def step() -> None:
        common.train_step(model, opt, x, y, hf, amp=torch.bfloat16)

    def sample() -> float:
        sync(plan.device)
        t0 = common.clock()
        for _ in range(plan.steps_per_sample):
            step()
        sync(plan.device)
        return plan.steps_per_sample * x.numel() / (common.clock() - t0)

    return step, sample


def train_section(plan: Plan, left) -> dict:
    cfgs = configs(plan, plan.seq)
    cfgs["hf-llama"] = cfgs["lmlab-llama"]

    def build(name: str):
        torch.manual_seed(0)
        model = common.hf_llama(cfgs[name]) if name == "hf-llama" else GPT(cfgs[name])
        return model.to(plan.device).train()

    data = torch.randint(0, plan.vocab, (plan.batch, plan.seq + 1), device=plan.device)
    runs, out = {}, {"batch": plan.batch, "seq_len": plan.seq, "depth": plan.depth,
                     "params": {}, "compile_s": {}, "skipped": {}}  # fmt: skip
    for name in cfgs:
        model = build(name)
        out["params"][name] = sum(p.numel() for p in model.parameters())
        step, runs[name] = _trainer(model, name == "hf-llama", data, plan)
        step()  # warm-up outside the rounds
    reserve = 0.35 * left()  # decode and ddp still to come
    for name in ("lmlab-llama", "hf-llama", "lmlab-default"):
        if left() - reserve < plan.compile_s_guess:
            out["skipped"][f"{name}+compile"] = f"time budget ({left():.0f} s left)"
            continue
        model = torch.compile(build(name), backend=plan.compile_backend)
        step, runs[f"{name}+compile"] = _trainer(model, name == "hf-llama", data, plan)
        sync(plan.device)
        t0 = common.clock()
        step()
        sync(plan.device)
        out["compile_s"][f"{name}+compile"] = common.clock() - t0
    samples = common.interleaved(runs, plan.rounds, warmup=0)
    peak = measure_matmul_flops(plan.device, "bf16", plan.matmul_n)
    out.update(matmul_peak_bf16=peak, datasheet_peak_bf16=peak_flops(plan.device, "bf16"))
    out["peers"] = {}
    for name, s in samples.items():
        achieved = cfgs[name.removesuffix("+compile")].flops_per_token(plan.seq) * common.median(s)
        out["peers"][name] = {
            "tokens_per_s": common.median(s),
            "samples": s,
            "mfu": achieved / peak,
            "mfu_datasheet": achieved / out["datasheet_peak_bf16"],
            "vs_hf": common.paired_ratio(s, samples["hf-llama"]),
        }
    return out


# ---- decode ---------------------------------------------------------------------------------
def decode_section(plan: Plan, left) -> dict:
    cfg = configs(plan, plan.prompt + plan.new)["lmlab-llama"]
    hf = common.hf_llama(cfg, seed=0)
    gpt = common.lmlab_from_hf(cfg, hf)
    hf, gpt = (m.to(plan.device, torch.bfloat16) for m in (hf, gpt))
    engine = Engine(gpt)

    def lmlab(ids: torch.Tensor, new: int) -> list[list[int]]:
        gens = engine.generate(ids.tolist(), GenerationConfig(max_new_tokens=new))
        return [g.tokens for g in gens]

    def hf_generate(ids: torch.Tensor, new: int) -> list[list[int]]:
        return common.hf_greedy(hf, ids.to(plan.device), new).tolist()

    out = {"prompt": plan.prompt, "new_tokens": plan.new, "dtype": "bfloat16", "batch": {}}
    for b in plan.decode_batches:
        ids = torch.randint(
            0, cfg.vocab_size, (b, plan.prompt), generator=torch.Generator().manual_seed(b)
        )
        tokens: dict[str, list] = {}

        def sample(fn, name: str, ids=ids, b=b, tokens=tokens) -> float:
            times = []
            for new in (1, plan.new):
                sync(plan.device)
                t0 = common.clock()
                tokens[name] = fn(ids, new)
                sync(plan.device)
                times.append(common.clock() - t0)
            # a prefill slower than the whole generation is noise (tiny dry-run shapes)
            return b * (plan.new - 1) / (times[1] - times[0]) if times[1] > times[0] else 0.0

        runs = {"lmlab-engine": lambda s=sample: s(lmlab, "lmlab-engine"),
                "hf-generate": lambda s=sample: s(hf_generate, "hf-generate")}  # fmt: skip
        budget = (left() - 40) / len(plan.decode_batches)  # at least 3 rounds, ddp still to come
        samples = common.interleaved(runs, plan.rounds, warmup=1, budget_s=budget)
        pairs = [
            (a, c)
            for ra, rc in zip(*tokens.values(), strict=True)
            for a, c in zip(ra, rc, strict=True)
        ]
        out["batch"][str(b)] = {
            "decode_tokens_per_s": {n: common.median(s) for n, s in samples.items()},
            "samples": dict(samples),
            "ratio_vs_hf_generate": common.paired_ratio(
                samples["lmlab-engine"], samples["hf-generate"]
            ),
            "greedy_token_agreement": sum(a == c for a, c in pairs) / len(pairs),
        }
    return out


# ---- ddp ------------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, backend: str, plan: Plan, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        device = torch.device("cuda", rank % torch.cuda.device_count()) if plan.device == "cuda" \
            else torch.device("cpu")  # fmt: skip
        if device.type == "cuda":
            torch.cuda.set_device(device)
        cfg = configs(plan, plan.seq)["lmlab-default"]
        torch.manual_seed(0)
        model = GPT(cfg).to(device)
        for p in model.parameters():  # nanochat zero-inits projections: give them gradients' work
            torch.nn.init.normal_(p, std=0.02)
        ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        b = max(1, plan.batch // 2)  # per rank: two ranks may share one GPU, with a reference
        data = torch.randint(0, cfg.vocab_size, (world * b, plan.seq + 1),
                             generator=torch.Generator().manual_seed(1)).to(device)  # fmt: skip
        mine = data[rank * b : (rank + 1) * b]
        ddp(mine[:, :-1], mine[:, 1:]).backward()  # fp32: the gradient check is exact-ish
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        if backend == "gloo":  # gloo gathers CPU tensors only
            grad = grad.cpu()
        every = [torch.empty_like(grad) for _ in range(world)]
        dist.all_gather(every, grad)
        result = {"backend": backend, "world": world, "device": str(device)}
        if rank == 0:
            ref = GPT(cfg).to(device)
            ref.load_state_dict(model.state_dict())
            ref(data[:, :-1], data[:, 1:]).backward()
            want = torch.cat([p.grad.flatten() for p in ref.parameters()]).to(grad.device)
            scale = want.abs().max().item()
            result["max_abs_diff_between_ranks"] = max((g - grad).abs().max().item() for g in every)
            result["max_rel_diff_vs_one_process"] = (grad - want).abs().max().item() / scale
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
        times = []
        for i in range(plan.rounds + 1):  # the first is a warm-up
            sync(plan.device)
            t0 = time.perf_counter()
            common.train_step(ddp, opt, mine[:, :-1], mine[:, 1:], hf=False, amp=torch.bfloat16)
            sync(plan.device)
            if i:
                times.append(time.perf_counter() - t0)
        if rank == 0:
            result.update(step_s=common.median(times), step_samples_s=times,
                          tokens_per_s=world * mine[:, :-1].numel() / common.median(times))  # fmt: skip
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_section(plan: Plan, left) -> dict:
    import torch.multiprocessing as mp

    tried = {}
    for backend in dict.fromkeys([plan.backend, "gloo"]):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "ddp.json"
            args = (2, backend, plan, _free_port(), str(out))
            ctx = mp.spawn(_ddp_worker, args=args, nprocs=2, join=False)
            end = time.perf_counter() + max(10.0, min(120.0, left()))
            try:
                while not ctx.join(timeout=2):
                    if time.perf_counter() > end:
                        raise TimeoutError("the DDP processes did not finish in time")
                return {**json.loads(out.read_text()), "refused": tried}
            except Exception as e:  # nccl may refuse two ranks on one GPU: try gloo next
                tried[backend] = _last_line(e)
                for p in ctx.processes:
                    if p.is_alive():
                        p.terminate()
    raise RuntimeError(f"every backend failed: {tried}")


# ---- the run --------------------------------------------------------------------------------
def _last_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"[:500]


def main(dry_run: bool = False, budget_s: float = BUDGET_S) -> dict:
    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no CUDA device (use --dry-run to check it on CPU)")
    start = time.perf_counter()
    plan = make_plan(dry_run)
    info = common.machine_info()
    if plan.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    results: dict = {"machine": info, "dry_run": dry_run, "plan": asdict(plan),
                     "budget_s": budget_s, "sections": {}}  # fmt: skip

    def left() -> float:
        return budget_s - (time.perf_counter() - start)

    for name, section, needs_s in (
        ("train", train_section, 30),
        ("decode", decode_section, 10),
        ("ddp", ddp_section, 10),
    ):
        t0 = time.perf_counter()
        if left() < needs_s:
            results["sections"][name] = {"skipped": f"time budget ({left():.0f} s left)"}
            continue
        try:
            results["sections"][name] = section(plan, left)
        except Exception as e:  # recorded, and the next section still runs
            results["sections"][name] = {"error": _last_line(e),
                                         "traceback": traceback.format_exc()[-2000:]}  # fmt: skip
        results["sections"][name]["wall_s"] = time.perf_counter() - t0
        print(f"{name}: {results['sections'][name]['wall_s']:.0f} s")
    results["total_s"] = time.perf_counter() - start
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, gloo")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="global time budget")
    parser.add_argument("--out", type=Path, help=f"default {OUT} ({DRY_OUT} with --dry-run)")
    args = parser.parse_args()
    res = main(dry_run=args.dry_run, budget_s=args.budget_s)
    out = args.out or (DRY_OUT if args.dry_run else OUT)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out} ({res['total_s']:.0f} s)")
