"""Training recipes: what a run trains, plugged into the one loop (`trainer.py`).

A recipe names an objective and builds everything around it; `run.train` owns the rest (run
directory, device, DDP, seeds, tokenizer, resume) and hands both to the one `Trainer`:

    prepare(cfg, args) -> (cfg, tokenizer, prepared)   before the run directory exists: resolve data
                                                       and tokenizer into the config that will run
                                                       (it is what the run id hashes)
    build(ctx)         -> RecipeParts                  model, objective, batches, evaluator, best
    finish(ctx, final)                                 after training (reports, extra files)

`objective(model, batch)` returns `(loss, metrics)` with the loss already averaged (the step then
averages over micro-steps and ranks), or `(loss_sum, metrics, weight)`: the step's loss is then
sum(loss_sum) / sum(weight) over every micro-step and rank (token-level normalisation, e.g. DAPO).
`metrics["tokens"]` counts tokens (or items) for throughput. The batch source is any object with
`next_batch()`, `state_dict()` and `load_state_dict(state)` (exact resume).

`lmlab train --set recipe=NAME --set recipe_args.KEY=VALUE` selects a recipe; its arguments are
validated by the recipe's own pydantic model (`Recipe.args`) when the config is resolved. A study
registers its recipes with `register_recipe` when its package is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from lmlab.errors import LmlabError

if TYPE_CHECKING:
    import torch

    from lmlab.runs.rundir import RunDir
    from lmlab.text.base import Tokenizer
    from lmlab.train.config import TrainConfig
    from lmlab.train.dist import Dist


@dataclass
class RunContext:
    cfg: TrainConfig
    args: BaseModel | None
    run: RunDir
    dist: Dist
    device: torch.device
    tokenizer: Tokenizer | None
    prepared: Any = None


@dataclass
class RecipeParts:
    model: Any
    objective: Callable
    batches: Any
    evaluate: Callable[[Any], dict[str, float]] | None = None
    best_metric: tuple[str, str] = ("val_loss", "min")
    ckpt_meta: dict = field(default_factory=dict)
    metric_modes: dict[str, str] = field(default_factory=dict)


class Recipe:
    """Subclass, set `name` (and `args`, a pydantic model of recipe_args), implement `build`."""

    name: str = ""
    args: type[BaseModel] | None = None
    description: str = ""

    def prepare(self, cfg: TrainConfig, args: BaseModel | None):
        """Default: the tokenizer named by data.tokenizer, else the one of init_from, else none;
        model.vocab_size follows it."""
        from lmlab.text.tokenizer import load_tokenizer

        tok = None
        if cfg.data.tokenizer:
            tok = load_tokenizer(cfg.data.tokenizer)
        elif cfg.init_from:
            from lmlab.model.checkpoint import load_tokenizer_for

            tok = load_tokenizer_for(cfg.init_from)
        if tok is not None:
            cfg = cfg.model_copy(
                update={"model": cfg.model.model_copy(update={"vocab_size": tok.vocab_size})}
            )
        return cfg, tok, None

    def build(self, ctx: RunContext) -> RecipeParts:
        raise NotImplementedError

    def finish(self, ctx: RunContext, final: dict[str, float]) -> None:
        return None

    def parse_args(self, raw: dict | None) -> BaseModel | None:
        """recipe_args validated by this recipe's model; errors name recipe_args.KEY."""
        if self.args is None:
            if raw:
                raise LmlabError(f"recipe {self.name!r} takes no recipe_args (got {sorted(raw)})")
            return None
        try:
            return self.args.model_validate(raw or {})
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(["recipe_args", *map(str, err["loc"])])
            raise LmlabError(f"{where}: {err['msg']}") from None


RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    if not recipe.name:
        raise ValueError("a recipe needs a name")
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    _builtin()
    if name not in RECIPES:
        raise LmlabError(f"unknown recipe {name!r} (known: {', '.join(sorted(RECIPES))})")
    return RECIPES[name]


def _builtin() -> None:
    import lmlab.train.lm  # noqa: F401  (registers "lm")
