"""`lmlab retrieval eval`: exact-match retrieval accuracy of a checkpoint on an eval split.

The prompt is the sample up to and including `Q <key>` and `A` (the model sees which key is
asked: the original evaluator dropped that line). Greedy decoding through the one engine, batched;
the prediction is the first generated word. Results: overall accuracy and accuracy by length and
key-position bucket, each with its sample count and 95% Wilson interval, an accuracy heatmap, a
JSON file, per-sample predictions and a report section, all in the eval's run directory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import Field, field_validator, model_validator

from lmlab.config import Strict
from lmlab.errors import LmlabError
from lmlab.paths import atomic_write_text
from lmlab.runs.report import Report, heatmap
from lmlab.runs.rundir import RunDir
from lmlab.studies.retrieval import buckets as B
from lmlab.studies.retrieval.generate import KV_MANIFEST, MANIFEST, SAMPLES

RESULTS = "results.json"
PREDICTIONS = "predictions.parquet"


class EvalConfig(Strict):
    name: str = Field("kv-eval", description="Run name; the run id is <name>-<hash8>.")
    label: str | None = Field(None, description="What the report calls the model (a scenario).")
    ckpt: str | None = Field(None, description="Run or checkpoint directory.")
    data: str | None = Field(None, description="An eval split directory (DIR/eval).")
    manifest: str | None = Field(None, description="DIR/kv_manifest.json (uses its eval split).")
    max_samples: int | None = Field(None, description="Evaluate at most N samples (None: all).")
    seed: int = Field(0, description="Picks the subset when max_samples < the split's samples.")
    batch_size: int = Field(64, ge=1)
    max_new_tokens: int | None = Field(
        None, ge=1, description="Tokens generated per prompt (None: 2 word-level, 8 bpe)."
    )
    device: str = "cpu"

    @field_validator("max_samples")
    @classmethod
    def _positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be at least 1 (got {v}); leave it unset to evaluate all")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> EvalConfig:
        if self.data and self.manifest:
            raise ValueError("give either data (an eval split dir) or manifest, not both")
        return self


def resolve_eval_dir(cfg: EvalConfig) -> Path:
    if cfg.manifest:
        path = Path(cfg.manifest)
        if path.is_dir():
            path = path / KV_MANIFEST
        if not path.is_file():
            raise LmlabError(f"manifest not found: {path} (expected DIR/{KV_MANIFEST})")
        try:
            kv = json.loads(path.read_text(encoding="utf-8"))
            return path.parent / kv["eval"]["dir"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise LmlabError(f"{path}: not a retrieval kv_manifest.json (no eval.dir)") from None
    if not cfg.data:
        raise LmlabError("no eval data: pass --data DIR/eval or --manifest DIR/kv_manifest.json")
    return Path(cfg.data)


def load_split(split_dir: Path) -> tuple[dict, pl.DataFrame]:
    man_path = split_dir / MANIFEST
    if not split_dir.is_dir():
        raise LmlabError(f"eval data not found: {split_dir}")
    if not man_path.is_file():
        raise LmlabError(
            f"{split_dir}: no {MANIFEST}, so not a retrieval split (make one with "
            "`lmlab retrieval generate --out DIR`, then pass DIR/eval)"
        )
    try:
        manifest = json.loads(man_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LmlabError(f"{man_path}:{e.lineno}: invalid JSON ({e.msg})") from None
    samples = split_dir / manifest.get("files", {}).get("samples", SAMPLES)
    if not samples.is_file():
        raise LmlabError(f"{split_dir}: manifest names {samples.name}, which is missing")
    return manifest, pl.read_parquet(samples)


def first_word(text: str) -> str:
    words = text.split()
    return words[0] if words else ""


def predict(model, tok, prompts: list[str], batch_size: int, max_new: int) -> list[str]:
    """Greedy first words for each prompt, batched through the engine (shortest first)."""
    from lmlab.model.engine import Engine, GenerationConfig

    ids = [[tok.bos_id, *p] for p in tok.encode_batch(prompts)]
    context = model.cfg.seq_len
    need = max(len(p) for p in ids) + max_new
    if need > context:
        raise LmlabError(
            f"eval prompts need up to {need} tokens ({max_new} generated) but the checkpoint's "
            f"context is {context}: over by {need - context}; train with model.seq_len >= {need}"
        )
    newline = tok.encode("\n")
    stops = {tok.bos_id, tok.eot_id, *(newline if len(newline) == 1 else [])}
    gen = GenerationConfig(max_new_tokens=max_new, temperature=0.0, stop_tokens=sorted(stops))
    engine = Engine(model, tok)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        for i, g in zip(rows, engine.generate([ids[i] for i in rows], gen), strict=True):
            out[i] = first_word(tok.decode(g.tokens, skip_special=True))
    return out


def _cell(hits: int, n: int) -> dict:
    lo, hi = B.wilson(hits, n)
    return {
        "accuracy": hits / n if n else None,
        "ci95": [lo, hi] if n else None,
        "n": n,
        "correct": hits,
    }


def summarize(df: pl.DataFrame) -> dict:
    """Overall and per-bucket accuracy (each with n and a 95% Wilson interval)."""
    correct = df["correct"].to_list()
    lengths = [B.length_bucket(n) for n in df["num_pairs"].to_list()]
    positions = [B.position_bucket(p) for p in df["query_position"].to_list()]

    def by(keys: list[str], names) -> dict:
        out = {}
        for name in names:
            hits = [c for c, k in zip(correct, keys, strict=True) if k == name]
            out[name] = _cell(sum(hits), len(hits))
        return out

    return {
        "overall": _cell(sum(correct), len(correct)),
        "by_length": by(lengths, [b[0] for b in B.LENGTH_BUCKETS]),
        "by_position": by(positions, B.POSITION_BUCKETS),
    }


def metric_name(group: str, bucket: str) -> str:
    slug = bucket.replace("<=", "le").replace(">", "gt").replace("-", "_")
    return f"acc_{'len' if group == 'by_length' else 'pos'}_{slug}"


def flat_metrics(summary: dict) -> dict[str, float]:
    out = {"accuracy": summary["overall"]["accuracy"]}
    for group in ("by_length", "by_position"):
        for bucket, cell in summary[group].items():
            if cell["n"]:
                out[metric_name(group, bucket)] = cell["accuracy"]
    return out


def fmt_cell(cell: dict) -> str:
    if not cell["n"]:
        return "-"
    lo, hi = cell["ci95"]
    return f"{100 * cell['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def summary_rows(summary: dict) -> list[list]:
    rows = [["overall", "all", fmt_cell(summary["overall"]), summary["overall"]["n"]]]
    for group, label in (("by_length", "pairs"), ("by_position", "key position")):
        for bucket, cell in summary[group].items():
            rows.append([label, bucket, fmt_cell(cell), cell["n"]])
    return rows


def report_section(results: dict, base: Path, heatmap_path: Path | None) -> Report:
    label = results.get("label") or Path(results["ckpt"]).name
    rep = Report(f"Retrieval evaluation: {label}")
    rep.text(
        f"Checkpoint `{results['ckpt']}` on `{results['data']}` ({results['samples']} samples; "
        "greedy, first generated word, exact match; 95% Wilson intervals). The prompt ends with "
        "`Q <key>` and `A`, so the model sees the query."
    )
    rep.table(["group", "bucket", "accuracy [95% CI]", "n"], summary_rows(results["summary"]))
    if heatmap_path is not None:
        rep.image(heatmap_path, base, "accuracy by number of pairs and key position")
    return rep


def evaluate(cfg: EvalConfig, run_dir: Path | None = None, echo=print) -> dict:
    from lmlab.model.checkpoint import load_checkpoint

    if not cfg.ckpt:
        raise LmlabError("no checkpoint: pass --ckpt RUN_DIR")
    split_dir = resolve_eval_dir(cfg)
    manifest, df = load_split(split_dir)
    model, tok, meta = load_checkpoint(cfg.ckpt, cfg.device)
    want = manifest.get("tokenizer", {}).get("hash")
    have = (meta.get("tokenizer") or {}).get("hash") or tok.hash
    if want != have:
        raise LmlabError(
            f"tokenizer mismatch: checkpoint {cfg.ckpt} was trained with tokenizer {have} but "
            f"the eval data {split_dir} was made with {want}"
        )
    if cfg.max_samples is not None and cfg.max_samples < len(df):
        rng = np.random.default_rng(cfg.seed)
        keep = np.sort(rng.choice(len(df), size=cfg.max_samples, replace=False))
        df = df[keep.tolist()]
    run = RunDir.create(cfg, name=cfg.name, run_dir=run_dir)
    with run.running() as extra:
        max_new = cfg.max_new_tokens or (2 if tok.kind == "word" else 8)
        preds = predict(model, tok, df["prompt"].to_list(), cfg.batch_size, max_new)
        df = df.select(
            "sample_id", "num_pairs", "query_index", "query_position", "key", "value"
        ).with_columns(pl.Series("prediction", preds, dtype=pl.String))
        df = df.with_columns((pl.col("prediction") == pl.col("value")).alias("correct"))
        df.write_parquet(run.path / PREDICTIONS)
        summary = summarize(df)
        axes = manifest.get("spec", {})
        acc, extent = B.accuracy_matrix(
            df["num_pairs"],
            df["query_position"],
            df["correct"],
            int(axes.get("max_pairs", df["num_pairs"].max())),
            int(axes.get("min_pairs", 1)),
        )
        hm = heatmap(
            acc,
            run.plots / "accuracy_heatmap.png",
            xlabel="number of pairs",
            ylabel="key position (0 = first pair, 1 = last)",
            title=f"accuracy: {cfg.label or Path(cfg.ckpt).name}",
            extent=extent,
            vmin=0.0,
            vmax=1.0,
            cbar_label="exact match",
        )
        results = {
            "label": cfg.label,
            "ckpt": str(cfg.ckpt),
            "ckpt_step": meta.get("step"),
            "data": str(split_dir),
            "split": manifest.get("split"),
            "samples": len(df),
            "tokenizer": have,
            "max_new_tokens": max_new,
            "summary": summary,
            "accuracy_heatmap": {
                "matrix": [[None if math.isnan(v) else v for v in row] for row in acc.tolist()],
                "extent": list(extent),
                "x": "number of pairs",
                "y": "relative key position",
            },
        }
        atomic_write_text(run.path / RESULTS, json.dumps(results, indent=2) + "\n")
        report_section(results, run.path, hm).write(run.path / "report.md")
        run.log(step=0, **flat_metrics(summary))
        extra["results"] = RESULTS
        o = summary["overall"]
        echo(f"accuracy {fmt_cell(o)} on {o['n']} samples -> {run.path / 'report.md'}")
    return {**results, "run_dir": str(run.path)}
