"""`lmlab distill demo`: MiniLM over every text lmlab ships, students at dim 128 and 64 over three
seeds against PCA and a random projection, on CPU in a few minutes.

Every student trains through the one trainer (recipe "distill") in its own run directory under
the demo folder; a rerun resumes or skips finished runs. Scores are of the FINAL student (the
best checkpoint is chosen on the eval queries, so it would flatter the student) on the held-out
queries, with mean ± std over seeds and a 95% confidence interval over queries; student vs PCA
is a paired per-query difference with its own interval.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from lmlab.config import config_hash, deep_merge, load_file, validate
from lmlab.paths import atomic_write_text, runs_root
from lmlab.train.config import TrainConfig

PROFILE = Path(__file__).parent / "profiles" / "track-b.yaml"
# CPU-sized: the seed's tau, filter and lr; fewer neighbours/negatives and steps for ~2.5k items
DEMO = {
    "name": "distill-demo",
    "steps": 600,
    "micro_batch": 64,
    "eval_every": 100,
    "ckpt_every": 0,
    "log_every": 20,
    "progress": False,
    "device": "cpu",
    "optim": {"lr": 0.002},
    "schedule": {"warmup_steps": 60},
    "recipe_args": {"builtin": "shipped", "k": 20, "neg_m": 256, "queue_size": 4096},
}


def demo_config(dim: int, seed: int, steps: int | None) -> TrainConfig:
    data = deep_merge(load_file(PROFILE), DEMO)
    data = deep_merge(data, {"seed": seed, "recipe_args": {"dim": dim}})
    if steps:
        data = deep_merge(data, {"steps": steps, "schedule": {"warmup_steps": max(1, steps // 10)}})
    return validate(TrainConfig, data, "distill demo")


def ci95(values: list[float]) -> float:
    """Half-width of a normal 95% interval of the mean."""
    if len(values) < 2:
        return 0.0
    return 1.96 * statistics.stdev(values) / math.sqrt(len(values))


def _per_query(judge, emb) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in judge.per_query(torch.as_tensor(emb)).items()}


def run_demo(out: Path | None, steps: int | None, seeds: list[int], dims: list[int]) -> Path:
    from lmlab.model.checkpoint import load_model
    from lmlab.studies.distill.metrics import NeighbourEval, baseline_embeddings
    from lmlab.studies.distill.recipe import DistillRecipe
    from lmlab.train.run import train

    out = Path(out or runs_root() / "distill-demo")
    t0 = time.time()
    first = demo_config(dims[0], seeds[0], steps)
    _, _, p = DistillRecipe().prepare(first, first.args())  # MiniLM encode + kNN, cached
    teacher = torch.from_numpy(p.teacher.emb)
    judge = NeighbourEval(teacher, torch.from_numpy(p.query_ids), first.args().eval_k)
    # the same number of training anchors: does the student generalise to unseen queries?
    stride = max(1, len(p.train_ids) // len(p.query_ids))
    seen = NeighbourEval(teacher, torch.from_numpy(p.train_ids[::stride][: len(p.query_ids)]), 10)
    t_teacher = time.time() - t0
    scores: dict[tuple[str, int], list[dict[str, np.ndarray]]] = {}
    for dim in dims:
        for seed in seeds:
            cfg = demo_config(dim, seed, steps)
            run = train(cfg, run_dir=out / f"d{dim}-s{seed}-{config_hash(cfg)}")
            model, _ = load_model(run.path / "checkpoints" / "latest")
            student = model.embed(teacher)
            scores.setdefault(("student", dim), []).append(_per_query(judge, student))
            scores.setdefault(("student@anchors", dim), []).append(_per_query(seen, student))
            embs = baseline_embeddings(p.teacher.emb, p.train_ids, dim, ["pca", "random"], seed)
            for name, emb in embs.items():
                scores.setdefault((name, dim), []).append(_per_query(judge, emb))
            scores.setdefault(("pca@anchors", dim), []).append(_per_query(seen, embs["pca"]))
    wall = time.time() - t0
    report = out / "report.md"
    atomic_write_text(report, report_text(scores, p, seeds, dims, first, t_teacher, wall))
    atomic_write_text(out / "demo.json", json.dumps(summary_numbers(scores), indent=2))
    return report


def summary_numbers(scores) -> dict:
    out = {}
    for (method, dim), runs in scores.items():
        for metric in ("recall", "ndcg", "ndcg_binary", "overlap"):
            per_seed = [float(r[metric].mean()) for r in runs]
            pooled = np.mean([r[metric] for r in runs], axis=0)  # per query, averaged over seeds
            out[f"{method}_d{dim}_{metric}"] = {
                "mean": statistics.fmean(per_seed),
                "std": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
                "ci95_queries": ci95(pooled.tolist()),
                "per_seed": per_seed,
            }
    return out


def _paired(scores, dim: int, metric: str, other: str) -> tuple[float, float]:
    a = np.mean([r[metric] for r in scores[("student", dim)]], axis=0)
    b = np.mean([r[metric] for r in scores[(other, dim)]], axis=0)
    diff = (a - b).tolist()
    return statistics.fmean(diff), ci95(diff)


def report_text(scores, p, seeds, dims, cfg, t_teacher: float, wall: float) -> str:
    args = cfg.args()
    k = args.eval_k
    nums = summary_numbers(scores)
    lines = [
        "# lmlab distill demo",
        "",
        f"Teacher: MiniLM (all-MiniLM-L6-v2, 384-d) over {p.teacher.emb.shape[0]} unique sentences "
        f"({p.teacher.source}), hash {p.teacher.hash}. {len(p.train_ids)} training anchors, "
        f"{len(p.query_ids)} held-out queries. Student: projection 384 -> {args.hidden} -> dim, "
        f"{cfg.steps} steps, batch {cfg.micro_batch}, K={args.k}, M={args.neg_m}, "
        f"Q={args.queue_size}, tau={args.tau}, filter {args.false_neg_mode} {args.false_neg_threshold}; "
        f"seeds {seeds}. Scores of the final student; mean ± std over seeds [95% CI over queries].",
        "",
        f"| method | dim | recall@{k} | nDCG@{k} | nDCG@{k} binary | overlap@{k} |",
        "|---|---|---|---|---|---|",
    ]
    for dim in dims:
        for method in ("student", "pca", "random"):
            cells = []
            for metric in ("recall", "ndcg", "ndcg_binary", "overlap"):
                n = nums[f"{method}_d{dim}_{metric}"]
                cells.append(f"{n['mean']:.4f} ± {n['std']:.4f} [±{n['ci95_queries']:.4f}]")
            lines.append(f"| {method} | {dim} | " + " | ".join(cells) + " |")
    lines += ["", "Student minus baseline, paired over queries (mean [95% CI]):", ""]
    for dim in dims:
        for other in ("pca", "random"):
            parts = []
            for metric in ("recall", "ndcg"):
                d, half = _paired(scores, dim, metric, other)
                verdict = (
                    "better" if d - half > 0 else "worse" if d + half < 0 else "no clear difference"
                )
                parts.append(f"{metric}@{k} {d:+.4f} [±{half:.4f}] ({verdict})")
            lines.append(f"- dim {dim} vs {other}: " + "; ".join(parts))
    lines += ["", "Generalisation check (recall@10 on training anchors vs held-out queries):", ""]
    for dim in dims:
        a, q = (
            nums[f"student@anchors_d{dim}_recall"]["mean"],
            nums[f"student_d{dim}_recall"]["mean"],
        )
        pa, pq = nums[f"pca@anchors_d{dim}_recall"]["mean"], nums[f"pca_d{dim}_recall"]["mean"]
        lines.append(
            f"- dim {dim}: student {a:.4f} on anchors, {q:.4f} on queries; PCA {pa:.4f} / {pq:.4f}"
        )
    lines += ["", f"Wall time: {wall:.0f} s (teacher + kNN {t_teacher:.0f} s, cached on rerun)."]
    return "\n".join(lines) + "\n"
