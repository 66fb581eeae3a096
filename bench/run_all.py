"""Run every benchmark, print the results and write bench/results.json.

    .venv/bin/python bench/run_all.py                 # what `make bench` runs
    .venv/bin/python bench/run_all.py --quick         # fewer rounds, a smoke check (~2-3 min)
    .venv/bin/python bench/run_all.py --threads 1 --out bench/results-1thread.json
    .venv/bin/python bench/run_all.py --compile       # adds torch.compile'd training peers

Each benchmark stops adding rounds after its time budget (at least 3 rounds), so the whole run
stays under ~8 minutes on the 2-core development machine even when other processes load it
(--compile adds ~5 minutes of compilation). Peak memory (memory.py) runs each peer in a fresh
process; gpu.py runs too when a CUDA device is present (its sections are under "gpu").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import decode  # noqa: E402
import gpu  # noqa: E402
import kv_prefill  # noqa: E402
import memory  # noqa: E402
import short_conv  # noqa: E402
import train_throughput  # noqa: E402

GOALS = {
    "train_llama_vs_hf": ("lmlab-llama training tok/s / HF Llama", ">=", 1.3),
    "train_default_vs_hf": ("lmlab-default training tok/s / HF Llama", ">=", 1.3),
    "train_mfu": ("best lmlab training MFU", ">=", 0.5),
    "decode_b1_vs_hf": ("decode tok/s B=1 / HF generate", ">=", 2.0),
    "decode_b8_vs_hf": ("decode tok/s B=8 / HF generate", ">=", 2.0),
    "snapkv_prefill_overhead": ("SnapKV(0.2) prefill overhead vs full, T=2048", "<=", 0.15),
    "snapkv_decode_speedup": ("SnapKV(0.2) decode tok/s / full, T=2048", ">", 1.0),
}


def goals(results: dict) -> dict:
    tr, de, kv = results["train"], results["decode"], results["kv_prefill"]
    b1, b8 = de["batch"].get("1", {}), de["batch"].get("8", {})
    measured = {  # key -> (value, measured while other processes took the cores it needed)
        "train_llama_vs_hf": (tr["ratio_llama_vs_hf"], tr["contended"]),
        "train_default_vs_hf": (tr["ratio_default_vs_hf"], tr["contended"]),
        "train_mfu": (tr["best_lmlab_mfu"], tr["contended"]),
        "decode_b1_vs_hf": (b1.get("ratio_vs_hf_generate"), b1.get("contended")),
        "decode_b8_vs_hf": (b8.get("ratio_vs_hf_generate"), b8.get("contended")),
        "snapkv_prefill_overhead": (kv["snapkv_prefill_overhead"], kv["contended"]),
        "snapkv_decode_speedup": (kv["snapkv_decode_speedup"], kv["contended"]),
    }
    out = {}
    for key, (what, op, target) in GOALS.items():
        value, contended = measured[key]
        if value is None:
            continue
        met = {">=": value >= target, "<=": value <= target, ">": value > target}[op]
        out[key] = {
            "what": what,
            "goal": f"{op} {target:g}",
            "measured": value,
            "met": met,
            "contended": bool(contended),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds each, short budgets")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the training peers under torch.compile (adds ~5 minutes)",
    )
    parser.add_argument(
        "--bf16", action="store_true", help="also time lmlab's training under bf16 autocast"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results.json"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scale = 0.35 if args.quick else 1.0

    info = common.machine_info()
    info["loadavg_before"] = common.loadavg()
    print(
        f"{info['date']}  {info['cpu']}  cpus={info['cpu_count']} threads={info['torch_threads']}  "
        f"torch {info['torch']}  transformers {info['transformers']}  "
        f"load {info['loadavg_before']}"
    )
    results: dict = {"machine": info}
    t0 = time.perf_counter()
    for name, module in (
        ("train", train_throughput),
        ("decode", decode),
        ("kv_prefill", kv_prefill),
        ("short_conv", short_conv),
        ("memory", memory),
    ):
        print()
        start = time.perf_counter()
        kwargs = {}
        if args.compile and module is train_throughput:
            kwargs["compile"] = True
        if args.bf16 and module is train_throughput:
            kwargs["bf16"] = True
        results[name] = module.main(
            budget_s=module.BUDGET_S * scale, repeats=module.REPEATS, **kwargs
        )
        results[name]["wall_s"] = time.perf_counter() - start
        results[name]["loadavg_after"] = common.loadavg()
    if torch.cuda.is_available():
        print()
        results["gpu"] = gpu.main(budget_s=gpu.BUDGET_S)
    info["loadavg_after"] = common.loadavg()
    info["total_s"] = time.perf_counter() - t0
    results["goals"] = goals(results)

    print(f"\ngoals (load average before {info['loadavg_before']}, after {info['loadavg_after']})")
    rows = [
        [
            g["what"],
            g["goal"],
            f"{g['measured']:.3g}",
            "met" if g["met"] else "MISSED",
            "CONTENDED: unreliable" if g["contended"] else "ok",
        ]
        for g in results["goals"].values()
    ]
    print(common.table(["measure", "goal", "measured", "", "machine"], rows))
    if any(g["contended"] for g in results["goals"].values()):
        print(
            "other processes held the cores these threads need during some benchmarks: their "
            "ratios are unreliable; rerun on a quiet machine or with --threads 1"
        )
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out} ({info['total_s']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
