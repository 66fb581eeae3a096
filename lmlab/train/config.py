"""TrainConfig: everything one training run needs, typed; profiles are YAML overrides of it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lmlab.config import Strict
from lmlab.model.config import ModelConfig


class DataConfig(Strict):
    sources: dict[str, float] = Field(
        default_factory=dict, description="Shard directory -> mixture weight (normalised)."
    )
    val_sources: dict[str, float] | None = Field(
        None, description="Validate on these shard dirs' val splits instead (None: sources)."
    )
    builtin: str | None = Field(
        None, description="Use a built-in generated corpus instead of sources (e.g. 'toy')."
    )
    tokenizer: str | None = Field(
        None, description="Tokenizer dir (default: the one the shards' meta.json records)."
    )
    doc_rows: bool | None = Field(None, description="One document per row (None: True for sft).")
    use_mask: bool | None = Field(None, description="Loss on masked tokens only (None: sft).")


class OptimConfig(Strict):
    name: Literal["adamw", "muon"] = Field(
        "adamw", description="adamw for all, or Muon for block matrices + AdamW for the rest."
    )
    lr: float = Field(3e-3, gt=0, description="Block matrices (and norms, biases).")
    embedding_lr: float | None = Field(None, gt=0, description="Token embedding (None: lr).")
    head_lr: float | None = Field(None, gt=0, description="Output layer (None: lr).")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="Max grad norm; 0 turns clipping off.")
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    lr_ref_width: int | None = Field(
        768,
        ge=1,
        description="Width the AdamW rates are quoted at: a model of width d uses lr*(d/ref)**-0.5 "
        "for its AdamW groups (nanochat's rule; Muon rates are not scaled). None: no scaling.",
    )


class ScheduleConfig(Strict):
    kind: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    decay_frac: float = Field(0.2, ge=0, le=1, description="wsd: share of steps spent decaying.")
    min_lr_frac: float = Field(0.1, ge=0, le=1, description="Final lr as a fraction of peak.")


# Where and how verbosely a run trains does not make it another experiment: `--device cpu` or
# `--set progress=false` continue the same run directory (config.yaml still records both).
NOT_IN_RUN_ID = ("device", "progress")


class TrainConfig(Strict):
    name: str = Field("train", description="Run name; the run id is <name>-<hash8>.")
    recipe: str = Field("lm", description="What to train: lm (pretrain/SFT) or a study's recipe.")
    recipe_args: dict[str, Any] = Field(
        default_factory=dict, description="The recipe's own options (validated by the recipe)."
    )
    phase: Literal["pretrain", "sft"] = "pretrain"
    seed: int = 0
    steps: int = Field(100, ge=1, description="Optimizer steps.")
    micro_batch: int = Field(8, ge=1, description="Sequences per forward pass per process.")
    total_batch_tokens: int | None = Field(
        None, ge=1, description="Tokens per optimizer step over all ranks (None: one micro batch)."
    )
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Autocast dtype.")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    log_every: int = Field(1, ge=1)
    eval_every: int = Field(50, ge=0, description="Validation every N steps (0: only at the end).")
    eval_batches: int = Field(8, ge=1)
    eval_at_start: bool = Field(False, description="Also validate before the first step (step 0).")
    ckpt_every: int = Field(0, ge=0, description="Also keep step_N every N steps (0: never).")
    init_from: str | None = Field(None, description="Run or checkpoint dir to start weights from.")
    peak_flops: float | None = Field(None, description="For MFU (None: measured matmul peak).")
    progress: bool = True
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.schedule.warmup_steps > self.steps:
            raise ValueError(
                f"schedule.warmup_steps ({self.schedule.warmup_steps}) exceeds steps ({self.steps})"
            )
        # the recipe validates its own arguments; what runs (and what the run id hashes) is the
        # full set with defaults. LmlabError passes through pydantic as a one-line error.
        from lmlab.train.recipes import get_recipe

        args = get_recipe(self.recipe).parse_args(self.recipe_args)
        self.__dict__["recipe_args"] = {} if args is None else args.model_dump(mode="json")
        return self

    def args(self) -> Any:
        """The recipe's arguments as its pydantic model (None for a recipe without any)."""
        from lmlab.train.recipes import get_recipe

        return get_recipe(self.recipe).parse_args(self.recipe_args)

    @property
    def sft(self) -> bool:
        return self.phase == "sft"

    def accum_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step so that the total batch is what the config says."""
        per_pass = self.micro_batch * self.model.seq_len * world_size
        if self.total_batch_tokens is None:
            return 1
        if self.total_batch_tokens % per_pass:
            raise ValueError(
                f"total_batch_tokens ({self.total_batch_tokens}) is not a multiple of "
                f"micro_batch*seq_len*world_size ({per_pass})"
            )
        return self.total_batch_tokens // per_pass
