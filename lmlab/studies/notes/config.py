"""The notes workflow's config, in the seed's shape, and its translation into core TrainConfigs.

    name, phase (pretrain | sft | pipeline), seed, device
    model.*                       the core ModelConfig (one `depth` dial)
    data.tokenizer                tokenizer dir (default: $LMLAB_HOME/notes/tokenizer)
    data.caches.pretrain_token_cache / sft_token_cache   (default: $LMLAB_HOME/notes/cache/...)
    data.mix_pretrain / mix_sft   {cache name: weight}; weights >= 0, normalised, 0 = left out
    data.val_pretrain_source      the pretrain cache whose val split measures pretraining
                                  (None: the val splits of the whole mix, by weight)
    training.pretrain|sft.{total_steps, micro_B, accum_steps, lr, amp, amp_dtype, ...}
    training.sft.init_from        None: the best checkpoint of this config's own pretrain run

Pydantic (extra=forbid) checks types and weights; `check_caches` checks, when a run starts, that
every name in a mix is a finished cache (the message lists those that are).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lmlab.config import Strict
from lmlab.errors import LmlabError
from lmlab.model.config import ModelConfig
from lmlab.studies.notes.caches import existing_caches
from lmlab.studies.notes.paths import default_cache_dir, default_tokenizer_dir
from lmlab.train.config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig

Phase = Literal["pretrain", "sft", "pipeline"]


class CachesConfig(Strict):
    pretrain_token_cache: str | None = Field(
        None, description="Folder of pretrain caches (None: $LMLAB_HOME/notes/cache/pretrain)."
    )
    sft_token_cache: str | None = Field(
        None, description="Folder of SFT caches (None: $LMLAB_HOME/notes/cache/sft)."
    )

    def root(self, kind: str) -> Path:
        chosen = self.pretrain_token_cache if kind == "pretrain" else self.sft_token_cache
        return Path(chosen).expanduser() if chosen else default_cache_dir() / kind


def _normalised(mix: dict[str, float], where: str) -> dict[str, float]:
    bad = {k: v for k, v in mix.items() if v < 0}
    if bad:
        name, w = next(iter(bad.items()))
        raise ValueError(f"weight of '{name}' is {w}; weights must be positive (0 leaves it out)")
    kept = {k: float(v) for k, v in mix.items() if v > 0}
    if not kept:
        raise ValueError(f"{where} needs at least one cache with a positive weight")
    total = sum(kept.values())
    return {k: v / total for k, v in kept.items()}


class NotesData(Strict):
    tokenizer: str | None = Field(None, description="Tokenizer dir (None: the notes default).")
    caches: CachesConfig = Field(default_factory=CachesConfig)
    mix_pretrain: dict[str, float] = Field(
        default_factory=lambda: {"roam": 0.7, "primer": 0.3},
        description="Pretrain cache name -> weight (normalised; 0 leaves a cache out).",
    )
    mix_sft: dict[str, float] = Field(
        default_factory=lambda: {"primer": 1.0},
        description="SFT cache name -> weight (normalised; 0 leaves a cache out).",
    )
    val_pretrain_source: str | None = Field(
        None, description="Pretrain cache whose val split is the validation set (None: the mix)."
    )

    @field_validator("mix_pretrain", "mix_sft")
    @classmethod
    def _mix(cls, v: dict[str, float], info) -> dict[str, float]:
        return _normalised(v, info.field_name)

    def tokenizer_dir(self) -> Path:
        return Path(self.tokenizer).expanduser() if self.tokenizer else default_tokenizer_dir()


class PhaseConfig(Strict):
    total_steps: int = Field(1000, ge=1, description="Optimizer steps.")
    micro_B: int = Field(16, ge=1, description="Sequences per forward pass.")
    accum_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate.")
    min_lr_frac: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(50, ge=0)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    optimizer: Literal["adamw", "muon"] = "adamw"
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    amp: bool = Field(False, description="Mixed precision (bf16 autocast; fp16 with GradScaler).")
    amp_dtype: Literal["bf16", "fp16"] = "bf16"
    eval_every: int = Field(100, ge=0, description="Validate every N steps (0: only at the end).")
    eval_batches: int = Field(8, ge=1)
    ckpt_every: int = Field(0, ge=0, description="Keep step_N checkpoints every N steps.")
    log_every: int = Field(10, ge=1)
    init_from: str | None = Field(
        None, description="SFT: run/checkpoint to start from (None: this config's pretrain run)."
    )

    @model_validator(mode="after")
    def _warmup(self) -> PhaseConfig:
        if self.warmup_steps > self.total_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) exceeds total_steps ({self.total_steps})"
            )
        return self


def _sft_defaults() -> PhaseConfig:
    return PhaseConfig(total_steps=300, lr=1e-3, warmup_steps=20, eval_every=50)


class TrainingConfig(Strict):
    pretrain: PhaseConfig = Field(default_factory=PhaseConfig)
    sft: PhaseConfig = Field(default_factory=_sft_defaults)


class NotesConfig(Strict):
    name: str = Field("notes", description="Run names are <name>-pretrain-<hash8>, -sft-<hash8>.")
    phase: Phase = Field("pretrain", description="What `lmlab notes train` runs by default.")
    seed: int = 42
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    progress: bool = True
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(depth=4, seq_len=256))
    data: NotesData = Field(default_factory=NotesData)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @model_validator(mode="after")
    def _pretrain_init(self) -> NotesConfig:
        if self.training.pretrain.init_from is not None:
            raise ValueError("training.pretrain.init_from: pretraining starts from scratch")
        return self


# ---------------------------------------------------------------- checks against the disk


def check_caches(cfg: NotesConfig, kind: str) -> dict[str, Path]:
    """{name: cache dir} of the `kind` mix (plus the val source), each a finished cache."""
    root = cfg.data.caches.root(kind)
    mix = cfg.data.mix_pretrain if kind == "pretrain" else cfg.data.mix_sft
    names = list(mix)
    if kind == "pretrain" and cfg.data.val_pretrain_source:
        names.append(cfg.data.val_pretrain_source)
    have = existing_caches(root)
    missing = [n for n in dict.fromkeys(names) if n not in have]
    if missing:
        key = "mix_pretrain" if kind == "pretrain" else "mix_sft"
        if kind == "pretrain" and missing == [cfg.data.val_pretrain_source]:
            key = "val_pretrain_source"
        raise LmlabError(
            f"data.{key} names the cache(s) {', '.join(missing)}, not found under {root} "
            f"(finished caches there: {', '.join(have) or 'none'}); build them with "
            f"`lmlab cache build-all`, or change the mix"
        )
    return {n: root / n for n in dict.fromkeys(names)}


# ---------------------------------------------------------------- translation


def to_train_config(
    cfg: NotesConfig,
    phase: str,
    sources: dict[str, float],
    init_from: str | None = None,
    val_sources: dict[str, float] | None = None,
) -> TrainConfig:
    """One phase of the notes config as a core TrainConfig over the given shard dirs."""
    p = cfg.training.pretrain if phase == "pretrain" else cfg.training.sft
    seq = cfg.model.seq_len
    return TrainConfig(
        name=f"{cfg.name}-{phase}",
        phase=phase,  # type: ignore[arg-type]
        seed=cfg.seed,
        steps=p.total_steps,
        micro_batch=p.micro_B,
        # accum_steps counts micro-batches of one process; under torchrun the global batch stays
        # micro_B * seq_len * accum_steps tokens, so accum_steps must divide by the world size
        total_batch_tokens=p.micro_B * seq * p.accum_steps if p.accum_steps > 1 else None,
        dtype=p.amp_dtype if p.amp else "fp32",
        device=cfg.device,
        log_every=p.log_every,
        eval_every=p.eval_every,
        eval_batches=p.eval_batches,
        eval_at_start=True,
        ckpt_every=p.ckpt_every,
        init_from=init_from,
        progress=cfg.progress,
        model=cfg.model,
        data=DataConfig(
            sources=sources, val_sources=val_sources, tokenizer=str(cfg.data.tokenizer_dir())
        ),
        optim=OptimConfig(  # the seed's lr is the rate itself, not quoted at a reference width
            name=p.optimizer,
            lr=p.lr,
            weight_decay=p.weight_decay,
            grad_clip=p.grad_clip,
            lr_ref_width=None,
        ),
        schedule=ScheduleConfig(
            kind=p.schedule, warmup_steps=p.warmup_steps, min_lr_frac=p.min_lr_frac
        ),
    )
