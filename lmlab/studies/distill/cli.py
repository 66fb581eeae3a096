"""`lmlab distill train|teacher|baselines|demo`: the embedding-distillation study's commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lmlab import config as C
from lmlab.cli_common import (
    ConfigOpt,
    DeviceOpt,
    PrintConfigOpt,
    ProfileOpt,
    ResumeOpt,
    RunDirOpt,
    SetOpt,
    resolve_or_exit,
)
from lmlab.errors import LmlabError
from lmlab.studies.distill import PROFILE_DIR
from lmlab.studies.distill.config import env_as_base, env_seeds

app = typer.Typer(
    help="Embedding distillation (seed 004): a student that keeps a teacher's neighbours.",
    no_args_is_help=True,
)

NpyOpt = Annotated[Path | None, typer.Option("--npy", help="Teacher matrix [N, D] (.npy).")]
TextsOpt = Annotated[
    list[Path] | None,
    typer.Option("--texts", help="Text/JSONL file or folder to embed with MiniLM (repeatable)."),
]
ShippedOpt = Annotated[
    bool, typer.Option("--shipped", help="Embed every text lmlab ships (the demo's corpus).")
]
NoEnvOpt = Annotated[
    bool,
    typer.Option("--no-env", help="Ignore TRACK_B_*, STEPS, LR, SEEDS, ... in the environment."),
]


def _sets(sets, npy, texts, shipped, device=None) -> list[str]:
    out = list(sets or [])
    if npy:
        out.append(f"recipe_args.teacher_npy={C.json_inline(str(npy))}")
    if texts:
        out.append(f"recipe_args.texts={C.json_inline([str(t) for t in texts])}")
    if shipped:
        out.append("recipe_args.builtin=shipped")
    if device:
        out.append(f"device={device}")
    return out


def resolve_train_config(config, sets, profile, no_env: bool, print_config: bool = False):
    """track-b defaults < environment < --profile < -c FILE < --set (see config.py)."""
    from lmlab.train.config import TrainConfig

    base = C.load_file(PROFILE_DIR / "track-b.yaml")
    if not no_env:
        base = C.deep_merge(base, env_as_base())
    return resolve_or_exit(
        TrainConfig,
        config=config,
        sets=sets,
        profile=profile,
        print_config=print_config,
        base=base,
        profile_dirs=C.profile_dirs(),
    )


def seeds_to_run(seeds: str | None, sets: list[str], cfg_seed: int, no_env: bool) -> list[int]:
    """--seeds, else a seed named by --set, else SEEDS from the environment, else the config's."""
    if seeds:
        return env_seeds({"SEEDS": seeds})
    if any(s.split("=", 1)[0].strip() == "seed" for s in sets):
        return [cfg_seed]
    return (None if no_env else env_seeds()) or [cfg_seed]


@app.command("train")
def train_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    profile: ProfileOpt = None,
    npy: NpyOpt = None,
    texts: TextsOpt = None,
    shipped: ShippedOpt = False,
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="Comma-separated seeds: one run each (SEEDS).")
    ] = None,
    device: DeviceOpt = None,
    resume: ResumeOpt = True,
    no_env: NoEnvOpt = False,
    run_dir: RunDirOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Train a student through the one trainer (recipe "distill"), one run per seed.

    Defaults are the seed's (profile track-b); TRACK_B_DIM, _K, _NEG_M/_M, _QUEUE_SIZE, _TAU,
    _FALSE_NEG_MODE, _FALSE_NEG_THRESHOLD, STEPS, SEEDS, LR, LR_SCHEDULE, WARMUP_STEPS, AMP,
    SAVE_EVERY, EVAL_EVERY, BATCH_SIZE and RUN_ID are read from the environment; a profile, -c
    file or --set wins over them.

    Example: lmlab distill train --shipped --seeds 0,1,2 --set steps=2000
    Example: TRACK_B_TAU=0.05 STEPS=20000 lmlab distill train --npy teacher.npy
    """
    sets = _sets(set_, npy, texts, shipped, device)
    cfg = resolve_train_config(config, sets, profile, no_env, print_config)
    todo = seeds_to_run(seeds, sets, cfg.seed, no_env)
    if run_dir and len(todo) > 1:
        raise LmlabError(f"--run-dir names one run but {len(todo)} seeds were asked ({todo})")
    from lmlab.train.run import train

    for seed in todo:
        train(cfg.model_copy(update={"seed": seed}), run_dir=run_dir, resume=resume)


@app.command("teacher")
def teacher_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    npy: NpyOpt = None,
    texts: TextsOpt = None,
    shipped: ShippedOpt = False,
    no_env: NoEnvOpt = False,
) -> None:
    """Embed (or load) the teacher and its exact top-K neighbours into the cache; print a summary.

    Example: lmlab distill teacher --texts notes/ --set recipe_args.k=20
    """
    from lmlab.studies.distill.recipe import DistillRecipe

    cfg = resolve_train_config(config, _sets(set_, npy, texts, shipped), None, no_env)
    _, _, prepared = DistillRecipe().prepare(cfg, cfg.args())
    t = prepared.teacher
    info = {
        "source": t.source,
        "shape": list(t.emb.shape),
        "hash": t.hash,
        "k": int(prepared.knn_idx.shape[1]),
        "train_anchors": len(prepared.train_ids),
        "eval_queries": len(prepared.query_ids),
        "mean_top1_cos": float(prepared.knn_sim[:, 0].mean()),
    }
    typer.echo(json.dumps(info, indent=2))


@app.command("baselines")
def baselines_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    npy: NpyOpt = None,
    texts: TextsOpt = None,
    shipped: ShippedOpt = False,
    dims: Annotated[str, typer.Option("--dims", help="Comma-separated dims.")] = "128,64",
    no_env: NoEnvOpt = False,
) -> None:
    """Score PCA, random projection and truncation of the teacher at each dim (no training).

    Example: lmlab distill baselines --npy teacher.npy --dims 256,128,64
    """
    import torch

    from lmlab.studies.distill.metrics import NeighbourEval, baseline_embeddings
    from lmlab.studies.distill.recipe import DistillRecipe

    cfg = resolve_train_config(config, _sets(set_, npy, texts, shipped), None, no_env)
    args = cfg.args()
    _, _, p = DistillRecipe().prepare(cfg, args)
    judge = NeighbourEval(
        torch.from_numpy(p.teacher.emb), torch.from_numpy(p.query_ids), args.eval_k
    )
    k = args.eval_k
    typer.echo(f"{'dim':>5} {'baseline':<10} {f'recall@{k}':>10} {f'ndcg@{k}':>9}")
    for dim in (int(d) for d in dims.split(",") if d.strip()):
        embs = baseline_embeddings(p.teacher.emb, p.train_ids, dim, args.baselines, cfg.seed)
        for name, emb in embs.items():
            s = judge.score(torch.from_numpy(emb))
            typer.echo(
                f"{dim:>5} {name:<10} {s[f'vs_teacher_recall{k}']:>10.4f} {s[f'vs_teacher_ndcg{k}']:>9.4f}"
            )


@app.command("demo")
def demo_cmd(
    out: Annotated[
        Path | None, typer.Option("--out", help="Demo folder (default: <runs>/distill-demo).")
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Training steps per run.")] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds.")] = "0,1,2",
    dims: Annotated[str, typer.Option("--dims", help="Comma-separated student dims.")] = "128,64",
) -> None:
    """MiniLM over every text lmlab ships; students at dim 128 and 64 (3 seeds) vs PCA and random
    projection; writes report.md with recall@10 and nDCG@10 (mean ± std, 95% CI).

    Example: lmlab distill demo
    """
    from lmlab.studies.distill.demo import run_demo

    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    dim_list = [int(d) for d in dims.split(",") if d.strip()]
    report = run_demo(out, steps=steps, seeds=seed_list, dims=dim_list)
    typer.echo(report.read_text())
    typer.echo(f"report: {report}")
