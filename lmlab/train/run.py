"""`train(cfg)`: one entry for every recipe. setup_run (run directory, device, DDP, seeds,
tokenizer, resume) is shared; the recipe builds what is trained; the one Trainer trains it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmlab.paths import runs_root
from lmlab.runs.rundir import RunDir, read_status, run_id
from lmlab.train.config import NOT_IN_RUN_ID, TrainConfig
from lmlab.train.dist import init_distributed, shutdown
from lmlab.train.recipes import RunContext, get_recipe
from lmlab.train.trainer import Trainer


def _identity(cfg: TrainConfig, world_size: int) -> dict:
    """What the run id hashes: the config, plus the world size when it sets the global batch
    (no total_batch_tokens), since a different world size is then a different trajectory."""
    key = cfg.model_dump(mode="json")
    if cfg.total_batch_tokens is None and world_size > 1:
        key["world_size"] = world_size
    return key


def _already_done(run: RunDir, steps: int) -> dict | None:
    """The status of a finished run whose latest checkpoint reached `steps` (read from disk, so
    every DDP rank agrees), else None."""
    status = read_status(run.path)
    meta = run.checkpoints / "latest" / "meta.json"
    if not status or status.get("state") != "done" or not meta.exists():
        return None
    return status if json.loads(meta.read_text()).get("step", 0) >= steps else None


def _set_aside_abandoned(run: RunDir) -> None:
    """Nothing to resume from: the log of an earlier attempt moves aside before anything of this
    attempt is logged, so that metrics.jsonl always describes one trajectory."""
    log = run.metrics_path
    rows = [line for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    if not rows:
        return
    k = 1
    while (aside := log.with_name(f"metrics.abandoned-{k}.jsonl")).exists():
        k += 1
    log.rename(aside)
    print(
        f"no checkpoint to resume from: starting at step 0 ({len(rows)} logged rows of an "
        f"earlier attempt moved to {aside.name})"
    )


def setup_run(cfg: TrainConfig, run_dir: Path | None, resume: bool, dist) -> RunContext:
    """Resolve the recipe's data and tokenizer into the config that runs, open its run directory
    (keyed by that config) and save the tokenizer beside the checkpoints."""
    recipe = get_recipe(cfg.recipe)
    args = recipe.parse_args(cfg.recipe_args)
    cfg, tok, prepared = recipe.prepare(cfg, args)
    if run_dir is None:
        run_dir = runs_root() / run_id(cfg.name, _identity(cfg, dist.world_size), NOT_IN_RUN_ID)
    run = RunDir.create(
        cfg,
        name=cfg.name,
        run_dir=run_dir,
        fresh=not resume,
        is_main=dist.is_main,
        exclude=NOT_IN_RUN_ID,
    )
    if dist.is_main and resume and not (run.checkpoints / "latest" / "optim.json").exists():
        _set_aside_abandoned(run)
    dist.barrier()
    if tok is not None and dist.is_main and not (run.path / "tokenizer").exists():
        tok.save(run.path / "tokenizer")
    return RunContext(cfg, args, run, dist, dist.device, tok, prepared)


def train(cfg: TrainConfig, run_dir: Path | None = None, resume: bool = True) -> RunDir:
    """Train `cfg.recipe` through the one loop; returns the run directory."""
    dist = init_distributed(cfg.device)
    try:
        ctx = setup_run(cfg, run_dir, resume, dist)
        recipe, run = get_recipe(ctx.cfg.recipe), ctx.run
        done = _already_done(run, ctx.cfg.steps) if resume else None
        if done is not None:
            if dist.is_main:
                final = " ".join(f"{k}={v:.4g}" for k, v in done.get("final", {}).items())
                print(f"already done: {run.path} (finished {done.get('finished')}): {final}")
            run.release()
            return run
        with run.running():
            torch.manual_seed(ctx.cfg.seed)
            parts = recipe.build(ctx)
            parts.model.to(dist.device)
            run.metric_modes = {**parts.metric_modes, parts.best_metric[0]: parts.best_metric[1]}
            meta = {"recipe": ctx.cfg.recipe, **parts.ckpt_meta}
            if ctx.tokenizer is not None:
                meta.setdefault("tokenizer", ctx.tokenizer.meta())
                meta.setdefault("tokenizer_dir", str(run.path / "tokenizer"))
            meta.setdefault("num_params", sum(p.numel() for p in parts.model.parameters()))
            trainer = Trainer(
                ctx.cfg,
                parts.model,
                parts.objective,
                parts.batches,
                run,
                dist,
                parts.evaluate,
                meta,
                parts.best_metric,
            )
            final = trainer.fit(resume=resume)
            recipe.finish(ctx, final)
            if dist.is_main:
                shown = " ".join(
                    f"{k}={v:.4f}"
                    for k, v in final.items()
                    if k == parts.best_metric[0] or k.startswith("val")
                )
                print(f"done: {run.path} step {trainer.step} {shown}".rstrip())
        return run
    finally:
        shutdown(dist)
