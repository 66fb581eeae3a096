"""What a distill run leaves beside the core run directory, in the seed's names:

    <run>/logs/train_logs.jsonl, train_logs.parquet   the run's metric rows (metrics.jsonl)
    <run>/logs/train_summary.json                     best/final, baselines, teacher, split
    <run>/checkpoints/student_best.safetensors        the best student's weights (no queue)
    <run>/checkpoints/student_step_N.safetensors      every step_N the trainer kept
    <run>/report.md                                   student vs PCA / random / truncation

Baselines at the student's dim are scored on the same queries and logged as one extra metrics
row (`baseline_pca_vs_teacher_recall10`, ...), so sweeps and status.json carry them too.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

from lmlab.paths import atomic_write_text
from lmlab.runs.rundir import summarize, write_parquet
from lmlab.studies.distill.metrics import NeighbourEval, baseline_embeddings


def baseline_scores(ctx) -> dict[str, float]:
    args, p = ctx.args, ctx.prepared
    teacher = torch.from_numpy(p.teacher.emb)
    judge = NeighbourEval(teacher, torch.from_numpy(p.query_ids), args.eval_k)
    out = {}
    embs = baseline_embeddings(p.teacher.emb, p.train_ids, args.dim, args.baselines, ctx.cfg.seed)
    for name, emb in embs.items():
        out.update(judge.score(torch.from_numpy(emb), prefix=f"baseline_{name}_vs_teacher_"))
    return out


def _student_files(ckpts) -> None:
    for tag_dir in sorted(ckpts.glob("*")):
        name = tag_dir.name
        if not (tag_dir / "model.safetensors").exists():
            continue
        if name == "best":
            out = "student_best"
        elif name.startswith("step_"):
            out = f"student_step_{int(name.split('_')[1])}"
        else:  # latest: the resume point, not a seed artefact
            continue
        state = load_file(tag_dir / "model.safetensors")
        weights = {k: v for k, v in state.items() if not k.startswith("queue.")}
        meta = json.loads((tag_dir / "meta.json").read_text())
        header = {"arch": json.dumps(meta.get("arch")), "step": str(meta.get("step"))}
        save_file(weights, ckpts / f"{out}.safetensors", metadata=header)


def write_seed_outputs(ctx) -> None:
    run = ctx.run
    rows = run.read_metrics()
    if not any(any(k.startswith("baseline_") for k in r) for r in rows):  # once, also on rerun
        run.log(ctx.cfg.steps, **baseline_scores(ctx))
        rows = run.read_metrics()
    logs = run.path / "logs"
    logs.mkdir(exist_ok=True)
    atomic_write_text(logs / "train_logs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_parquet(rows, logs / "train_logs.parquet")
    modes = getattr(run, "metric_modes", None)
    final, best = summarize(rows, modes)
    k = ctx.args.eval_k
    p = ctx.prepared
    summary = {
        "run_id": run.id,
        "best": {m: v for m, v in best.items() if m.startswith("vs_teacher")},
        "final": {m: v for m, v in final.items() if m.startswith("vs_teacher") or m == "loss"},
        "baselines": {m: v for m, v in final.items() if m.startswith("baseline_")},
        "primary": f"vs_teacher_recall{k}",
        "teacher": {
            "hash": p.teacher.hash,
            "source": p.teacher.source,
            "shape": list(p.teacher.emb.shape),
        },
        "split": {"train_anchors": len(p.train_ids), "eval_queries": len(p.query_ids)},
        "recipe_args": ctx.cfg.recipe_args,
        "steps": ctx.cfg.steps,
        "seed": ctx.cfg.seed,
    }
    atomic_write_text(logs / "train_summary.json", json.dumps(summary, indent=2))
    _student_files(run.checkpoints)
    atomic_write_text(run.path / "report.md", report_text(summary, k, ctx.args.dim))


def report_text(summary: dict, k: int, dim: int) -> str:
    lines = [
        f"# distill run {summary['run_id']}",
        "",
        f"teacher: {summary['teacher']['source']} {summary['teacher']['shape']} "
        f"(hash {summary['teacher']['hash']}); {summary['split']['eval_queries']} held-out queries",
        "",
        f"| embedding (dim {dim}) | recall@{k} | nDCG@{k} | nDCG@{k} binary | overlap@{k} |",
        "|---|---|---|---|---|",
    ]

    def row(label, get):
        vals = [get(f"recall{k}"), get(f"ndcg{k}"), get(f"ndcg{k}_binary"), get(f"overlap{k}")]
        return f"| {label} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in vals) + " |"

    lines.append(row("student (best)", lambda m: summary["best"].get(f"vs_teacher_{m}")))
    lines.append(row("student (final)", lambda m: summary["final"].get(f"vs_teacher_{m}")))
    got = summary["baselines"]
    for name in ("pca", "random", "truncate"):
        if any(key.startswith(f"baseline_{name}_") for key in got):
            lines.append(row(name, lambda m, n=name: got.get(f"baseline_{n}_vs_teacher_{m}")))
    return "\n".join(lines) + "\n"
