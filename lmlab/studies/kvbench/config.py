"""The bench's config: dataset, bins, sampling, engine, the policy x budget grid, scoring, analysis.

One YAML file drives every stage (`lmlab kvbench STAGE -c FILE`); unknown keys are errors. The
experiment folder is `output.dir`, else `<runs>/kvbench/<exp_group_id>/`:

    kvbench.sqlite                        the source of truth (every stage's rows)
    data/processed/<dataset_id>/manifest.json   the portable evaluation set
    plots/*.png, report.md, config.yaml
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from lmlab.config import Strict
from lmlab.paths import runs_root

FAILURE_TYPES = (
    "RATE_LIMITED",
    "EMPTY_OUTPUT",
    "TRUNCATED",
    "TIMEOUT",
    "CONTEXT_LENGTH_EXCEEDED",
    "ENGINE_ERROR",
    "REFUSAL",
    "FORMAT_ERROR",
)
METRICS = ("qa_f1", "exact_match", "string_match_all", "string_match_part", "first_word")


class FieldNames(Strict):
    """Which columns of a JSONL/parquet file hold what (LongBench's names by default)."""

    id: str = "_id"
    context: str = "context"
    question: str = "input"
    answers: str = "answers"
    length: str | None = Field("length", description="The dataset's own length field (optional).")


class DatasetConfig(Strict):
    kind: Literal["longbench", "table", "retrieval"] = Field(
        "longbench",
        description="longbench (HF `datasets`), table (JSONL/parquet files), retrieval (an eval "
        "split folder of the retrieval study, read as files).",
    )
    name: str = Field("longbench", description="dataset_id = <name>__<task>.")
    task: str = Field("narrativeqa", description="LongBench task (its template and max length).")
    hf_path: str = Field("THUDM/LongBench", description="Hub dataset for kind=longbench.")
    split: str = "test"
    files: list[str] = Field(
        default_factory=list,
        description="Local files (JSONL/parquet; for longbench: files in its row schema, read "
        "through `datasets` instead of the Hub); relative paths are relative to the config file.",
    )
    path: str | None = Field(None, description="kind=retrieval: the eval split folder (DIR/eval).")
    fields: FieldNames = Field(default_factory=FieldNames)
    template: str | None = Field(
        None,
        description="Prompt template with {context} and {input}; default: LongBench's for the "
        "task, '{context}{input}' for table/retrieval.",
    )
    metric: Literal[METRICS] | None = Field(  # type: ignore[valid-type]
        None, description="Default: qa_f1 (longbench/table), first_word (retrieval)."
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="Default: LongBench's for the task; 32 table; 2 retrieval."
    )
    limit: int | None = Field(None, ge=1, description="Read at most N rows (before sampling).")

    @property
    def dataset_id(self) -> str:
        return f"{self.name}__{self.task}"


class BinsConfig(Strict):
    count: int = Field(5, ge=1, description="Quantile bins of prompt length (engine tokens).")
    edges: list[int] | None = Field(
        None, description="Fixed bin edges in tokens (k+1 increasing numbers) instead of quantiles."
    )

    @field_validator("edges")
    @classmethod
    def _increasing(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) < 2 or any(b <= a for a, b in zip(v, v[1:], strict=False))):
            raise ValueError(f"edges {v} must be at least two strictly increasing numbers")
        return v


class FocusConfig(Strict):
    bins: list[int] = Field(default_factory=list, description="Bin indices to sample densely.")
    base_n_per_bin: int = Field(2, ge=0)
    focus_n_per_bin: int = Field(6, ge=1)


class SamplingConfig(Strict):
    strategy: Literal["uniform", "pinned", "focus_transition"] = "uniform"
    n_per_bin: int = Field(2, ge=1, description="uniform: examples per bin.")
    ids: list[str] = Field(default_factory=list, description="pinned: these example ids.")
    focus: FocusConfig = Field(default_factory=FocusConfig)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> SamplingConfig:
        if self.strategy == "pinned" and not self.ids:
            raise ValueError("strategy pinned needs a non-empty ids list")
        if self.strategy == "focus_transition" and not self.focus.bins:
            raise ValueError("strategy focus_transition needs focus.bins")
        return self


class RandomModel(Strict):
    """An untrained GPT with random (not zero) weights and a word-level tokenizer over the
    dataset's words, written as a checkpoint in the experiment folder: for offline plumbing checks
    (sanity), where accuracy is expected to be ~0 but every KV position changes the output."""

    depth: int = Field(2, ge=1)
    n_embd: int = Field(32, ge=8)
    n_head: int = Field(2, ge=1)
    seq_len: int = Field(512, ge=16)
    scale: float = Field(0.3, gt=0, description="Std of the random weight matrices.")
    seed: int = 0


class LocalEngine(Strict):
    kind: Literal["local"] = "local"
    checkpoint: str | None = Field(None, description="lmlab run or checkpoint directory.")
    random_init: RandomModel | None = Field(
        None, description="No checkpoint: an untrained random model (plumbing checks only)."
    )
    device: str = "cpu"
    batch_size: int = Field(8, ge=1, description="Requests per engine call (same cell).")


class OpenAIEngine(Strict):
    kind: Literal["openai"] = "openai"
    base_url: str = Field("http://127.0.0.1:8000/v1", description="Ends in /v1.")
    model: str = "default"
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable of the key.")
    endpoint: Literal["completions", "chat"] = "completions"
    max_rpm: float = Field(0, ge=0, description="Requests per minute (0 = unlimited).")
    concurrency: int = Field(4, ge=1, description="Requests in flight at once.")
    timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(3, ge=0, description="Retries after 429 / timeouts (back-off).")
    backoff_s: float = Field(1.0, ge=0, description="First back-off; doubles per retry.")
    tokenizer: str | None = Field(
        None, description="lmlab tokenizer folder for binning; else words count as tokens."
    )
    policies: list[str] = Field(
        default_factory=lambda: ["full", "snapkv", "streamingllm", "h2o", "random"],
        description="Policies the server accepts (checked against grid.policies).",
    )


class KvpressEngine(Strict):
    kind: Literal["kvpress"] = "kvpress"
    model: str = Field(..., description="HF model folder (local).")
    device: str = "cpu"


EngineConfig = Annotated[LocalEngine | OpenAIEngine | KvpressEngine, Field(discriminator="kind")]


class PolicyOptions(Strict):
    """Policy knobs passed to the engine as they are (the engine's defaults)."""

    window: int = Field(32, ge=1, description="snapkv observation window.")
    kernel: int = Field(7, ge=1, description="snapkv pooling kernel.")
    sinks: int = Field(4, ge=0, description="streamingllm attention sinks.")
    pooling: Literal["avg", "max"] = "avg"


class PolicyVariant(Strict):
    """A labelled policy configuration (e.g. SnapKV with an 8-token window), listed in
    `grid.policies` by its label: the engine runs `policy` with `grid.options` overridden by the
    fields given here, and every table names the label."""

    policy: str = Field(..., description="The engine's policy this variant configures.")
    window: int | None = Field(None, ge=1)
    kernel: int | None = Field(None, ge=1)
    sinks: int | None = Field(None, ge=0)
    pooling: Literal["avg", "max"] | None = None

    def overrides(self) -> dict:
        return self.model_dump(exclude={"policy"}, exclude_none=True)


class GridConfig(Strict):
    policies: list[str] = Field(default_factory=lambda: ["snapkv"])
    budgets: list[float] = Field(default_factory=lambda: [1.0, 0.5, 0.2])
    options: PolicyOptions = Field(default_factory=PolicyOptions)
    variants: dict[str, PolicyVariant] = Field(
        default_factory=dict,
        description="Labelled policy configurations (label -> policy + option overrides) that "
        "grid.policies may list beside the plain policy names.",
    )

    def resolve(self, label: str) -> tuple[str, PolicyOptions]:
        """(the engine's policy, its options) for a grid.policies entry."""
        v = self.variants.get(label)
        if v is None:
            return label, self.options
        return v.policy, self.options.model_copy(update=v.overrides())

    @model_validator(mode="after")
    def _variants(self) -> GridConfig:
        for label, v in self.variants.items():
            if label == "full" or v.policy == "full":
                raise ValueError(f"variants.{label}: full has no options to vary")
            if label == v.policy:
                raise ValueError(f"variants.{label}: give the variant its own label")
        return self

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("the budget list is empty: give at least one budget in (0, 1]")
        bad = [b for b in v if not 0.0 < b <= 1.0]
        if bad:
            raise ValueError(f"budget {bad[0]} is outside (0, 1]")
        return sorted(set(v), reverse=True)

    @field_validator("policies")
    @classmethod
    def _policies(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("the policy list is empty")
        return list(dict.fromkeys(v))


class GenerationOptions(Strict):
    temperature: float = Field(0.0, ge=0)
    seed: int = 0
    stop_at_newline: bool = Field(True, description="Stop at the first newline (short answers).")
    truncate: Literal["middle", "none"] = Field(
        "middle",
        description="Prompts over the context: LongBench's middle truncation, or a "
        "CONTEXT_LENGTH_EXCEEDED failure.",
    )
    kv_suffix: Annotated[int, Field(ge=0)] | Literal["answer_cue", "question"] = Field(
        0,
        description="What is prefilled AFTER the policy compressed the rest (it and every "
        "generated token then read the compressed cache; it is kept whole): 0 = nothing (the "
        "first token sees the full prompt), N = the last N prompt tokens, `answer_cue` = the "
        "prompt's last line (the retrieval split's final `A`, LongBench's `Answer:`), "
        "`question` = the template's text after {context} (kvpress's context/question split).",
    )


class AnalysisConfig(Strict):
    bootstrap: int = Field(2000, ge=100, description="Bootstrap resamples.")
    seed: int = 0
    threshold: float = Field(
        0.05, ge=0, description="A transition needs a drop (vs full cache) above this."
    )
    mean_drop: float = Field(0.1, ge=0, description="The seed's rule: mean drop above this.")


class OutputConfig(Strict):
    dir: str | None = Field(None, description="Experiment folder (default <runs>/kvbench/<id>).")


class KvbenchConfig(Strict):
    exp_group_id: str = Field("kvbench", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    description: str = ""
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    bins: BinsConfig = Field(default_factory=BinsConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    engine: EngineConfig = Field(default_factory=LocalEngine)
    grid: GridConfig = Field(default_factory=GridConfig)
    generation: GenerationOptions = Field(default_factory=GenerationOptions)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="before")
    @classmethod
    def _local_by_default(cls, data):
        """`engine:` without `kind` is the local engine (the discriminator needs the tag)."""
        eng = data.get("engine") if isinstance(data, dict) else None
        if isinstance(eng, dict) and "kind" not in eng:
            data = {**data, "engine": {"kind": "local", **eng}}
        return data

    def out_dir(self) -> Path:
        if self.output.dir:
            return Path(self.output.dir)
        return runs_root() / "kvbench" / self.exp_group_id


def rebase_paths(data: dict, base: Path) -> dict:
    """Make the config's relative file paths relative to the config file's folder, so a config
    works from any working directory."""

    def fix(p):
        if p is None or p.startswith("train:"):
            return p
        path = Path(p).expanduser()
        return p if path.is_absolute() else str((base / path).resolve())

    ds = data.get("dataset")
    if isinstance(ds, dict):
        if isinstance(ds.get("files"), list):
            ds["files"] = [fix(str(f)) for f in ds["files"]]
        if isinstance(ds.get("path"), str):
            ds["path"] = fix(ds["path"])
    eng = data.get("engine")
    if isinstance(eng, dict):
        for key in ("checkpoint", "tokenizer"):
            if isinstance(eng.get(key), str):
                eng[key] = fix(eng[key])
        if eng.get("kind") == "kvpress" and isinstance(eng.get("model"), str):
            if Path(eng["model"]).exists() or (base / eng["model"]).exists():
                eng["model"] = fix(eng["model"])
    out = data.get("output")
    if isinstance(out, dict) and isinstance(out.get("dir"), str):
        out["dir"] = fix(out["dir"])
    return data
