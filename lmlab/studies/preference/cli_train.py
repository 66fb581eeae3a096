"""`lmlab prefs train-rm|train-dpo|train-grpo`: the study's recipes on the one trainer.

Each verb builds a TrainConfig over the study's files in one data folder (`--dir`) and trains it
with `lmlab.train.run.train`; the same recipes run through `lmlab train --set recipe=...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmlab.cli_common import ConfigOpt, PrintConfigOpt, RunDirOpt, SetOpt, resolve_or_exit
from lmlab.errors import LmlabError
from lmlab.studies.preference.cli import (
    DirOpt,
    EmbeddingsOpt,
    PairsOpt,
    PrefixesOpt,
    app,
    data_dir,
)

RM_BASE = {
    "name": "rm",
    "recipe": "reward",
    "steps": 500,
    "micro_batch": 16,
    "eval_every": 100,
    "model": {"depth": 4, "seq_len": 256},
}
DPO_BASE = {**RM_BASE, "name": "dpo", "recipe": "dpo", "optim": {"lr": 1e-4}}
GRPO_BASE = {**RM_BASE, "name": "grpo", "recipe": "grpo", "optim": {"lr": 1e-4}}

DensityAwareOpt = Annotated[
    bool, typer.Option("--density-aware", help="Weight pairs by their prefix's density.")
]
TokenizerOpt = Annotated[
    Path | None, typer.Option("--tokenizer", help="Tokenizer dir (default: DIR/tokenizer).")
]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Optimizer steps.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Training seed.")]


def pair_recipe_config(
    base: dict,
    args: dict,
    d: Path,
    files: tuple[Path | None, Path | None, Path | None],
    tokenizer: Path | None,
    top: dict,
    config: Path | None,
    sets: list[str] | None,
    print_config: bool,
):
    """The TrainConfig of a recipe over pairs: the study's files in DIR, then -c, then --set."""
    from lmlab.train.config import TrainConfig

    pairs, prefixes, embeddings = files
    emb = embeddings or d / "embeddings"
    args = {"pairs": str(pairs or d / "pairs_all.jsonl"), **args}
    if (emb / "ids.json").exists() or args.get("density_aware"):
        args["embeddings"] = str(emb)
        args["prefixes"] = str(prefixes or d / "prefixes_all.jsonl")
    base = {**base, "recipe_args": args, **{k: v for k, v in top.items() if v is not None}}
    tok = tokenizer or (d / "tokenizer" if (d / "tokenizer").exists() else None)
    if tok is not None:
        base["data"] = {"tokenizer": str(tok)}
    if tok is None and not top.get("init_from"):
        raise LmlabError(
            f"no tokenizer: pass --tokenizer DIR or --init-from RUN, or train one into {d}/"
            f"tokenizer (lmlab tokenizer train --input-glob {d}/pairs_all.jsonl --out {d}/tokenizer)"
        )
    return resolve_or_exit(
        TrainConfig, config=config, sets=sets, profile=None, print_config=print_config, base=base
    )


@app.command("train-rm")
def train_rm_cmd(
    density_aware: DensityAwareOpt = False,
    weighting: Annotated[
        str, typer.Option("--weighting", help="sampler (draw by weight) | loss (weight losses).")
    ] = "sampler",
    tokenizer: TokenizerOpt = None,
    init_from: Annotated[
        str | None, typer.Option("--init-from", help="Start the backbone from this run.")
    ] = None,
    steps: StepsOpt = None,
    seed: SeedOpt = None,
    pairs: PairsOpt = None,
    prefixes: PrefixesOpt = None,
    embeddings: EmbeddingsOpt = None,
    dir_: DirOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Train a Bradley–Terry reward model (the "reward" recipe on the one trainer); validation
    is split by prefix and reports accuracy by density quartile (q1 = rarest).

    Example: lmlab prefs train-rm --dir runs/prefs-sample --density-aware --steps 200
    """
    from lmlab.train.run import train

    base = {**RM_BASE, "name": "rm-density" if density_aware else "rm"}
    args = {"density_aware": density_aware, "weighting": weighting}
    top = {"init_from": init_from, "steps": steps, "seed": seed}
    files = (pairs, prefixes, embeddings)
    d = data_dir(dir_)
    cfg = pair_recipe_config(base, args, d, files, tokenizer, top, config, set_, print_config)
    train(cfg, run_dir=run_dir)


@app.command("train-dpo")
def train_dpo_cmd(
    density_aware: DensityAwareOpt = False,
    loss_type: Annotated[
        str, typer.Option("--loss-type", help="sigmoid | ipo | hinge.")
    ] = "sigmoid",
    beta: Annotated[float, typer.Option("--beta", help="Pull towards the reference.")] = 0.1,
    init_from: Annotated[
        str | None, typer.Option("--init-from", help="Starting policy (and reference): a run.")
    ] = None,
    tokenizer: TokenizerOpt = None,
    steps: StepsOpt = None,
    seed: SeedOpt = None,
    pairs: PairsOpt = None,
    prefixes: PrefixesOpt = None,
    embeddings: EmbeddingsOpt = None,
    dir_: DirOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Train a policy with DPO against a frozen reference (the starting policy); with
    --density-aware each pair's loss is weighted by its prefix's density weight (mean 1).

    Example: lmlab prefs train-dpo --dir runs/prefs-sample --init-from runs/sft-1a2b3c4d --density-aware
    """
    from lmlab.train.run import train

    base = {**DPO_BASE, "name": "dpo-density" if density_aware else "dpo"}
    args = {"density_aware": density_aware, "loss_type": loss_type, "beta": beta}
    top = {"init_from": init_from, "steps": steps, "seed": seed}
    files = (pairs, prefixes, embeddings)
    d = data_dir(dir_)
    cfg = pair_recipe_config(base, args, d, files, tokenizer, top, config, set_, print_config)
    train(cfg, run_dir=run_dir)


@app.command("train-grpo")
def train_grpo_cmd(
    rm: Annotated[
        str | None,
        typer.Option("--rm", help="Reward-model run (or --set recipe_args.reward_word=WORD)."),
    ] = None,
    density_aware: Annotated[
        bool, typer.Option("--density-aware", help="Draw prompts by their density weight.")
    ] = False,
    num_generations: Annotated[
        int, typer.Option("--num-generations", help="G: completions per prompt (>= 2).")
    ] = 8,
    loss_type: Annotated[
        str, typer.Option("--loss-type", help="grpo | dr_grpo | dapo (normalisation).")
    ] = "dapo",
    beta: Annotated[float, typer.Option("--beta", help="KL (k3) to the starting policy.")] = 0.0,
    scale_rewards: Annotated[
        str, typer.Option("--scale-rewards", help="group | batch | none.")
    ] = "group",
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Longest completion.")
    ] = 32,
    init_from: Annotated[
        str | None, typer.Option("--init-from", help="Starting policy (and reference): a run.")
    ] = None,
    tokenizer: TokenizerOpt = None,
    steps: StepsOpt = None,
    seed: SeedOpt = None,
    pairs: PairsOpt = None,
    prefixes: PrefixesOpt = None,
    embeddings: EmbeddingsOpt = None,
    dir_: DirOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Train a policy with GRPO: G samples per prompt of the pairs file, rewards from a reward
    model, advantages relative to the group; with --density-aware rare prompts are drawn more
    often (by their density weight).

    Example: lmlab prefs train-grpo --dir runs/prefs-sample --init-from runs/sft-1a2b3c4d --rm runs/rm-5e6f7a8b
    """
    from lmlab.train.run import train

    base = {**GRPO_BASE, "name": "grpo-density" if density_aware else "grpo"}
    base["micro_batch"] = num_generations * max(1, 16 // max(num_generations, 1))
    args = {
        "density_aware": density_aware,
        "rm": rm or "",
        "num_generations": num_generations,
        "loss_type": loss_type,
        "beta": beta,
        "scale_rewards": scale_rewards,
        "max_new_tokens": max_new_tokens,
    }
    top = {"init_from": init_from, "steps": steps, "seed": seed}
    files = (pairs, prefixes, embeddings)
    d = data_dir(dir_)
    cfg = pair_recipe_config(base, args, d, files, tokenizer, top, config, set_, print_config)
    train(cfg, run_dir=run_dir)
