"""Evaluation rows from LongBench (through `datasets`), JSONL/parquet tables, or the retrieval
study's eval split (read as files: its manifest.json names samples.parquet, whose rows hold the
prompt, the asked key's value and the number of pairs).

Every loader returns plain rows {example_id, context, question, answers, all_classes,
dataset_length}; `render` turns one into the prompt text with the dataset's template.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.studies.kvbench import longbench
from lmlab.studies.kvbench.config import DatasetConfig


def metric_for(ds: DatasetConfig) -> str:
    if ds.metric:
        return ds.metric
    if ds.kind == "retrieval":
        return "first_word"
    if ds.kind == "longbench":
        return longbench.METRIC.get(ds.task, "qa_f1")
    return "qa_f1"


def template_for(ds: DatasetConfig) -> str:
    if ds.template:
        return ds.template
    if ds.kind == "longbench":
        if ds.task not in longbench.PROMPTS:
            raise LmlabError(
                f"dataset.task {ds.task!r} has no LongBench template here (known: "
                f"{', '.join(sorted(longbench.PROMPTS))}); give dataset.template"
            )
        return longbench.PROMPTS[ds.task]
    return "{context}{input}"


def max_new_tokens_for(ds: DatasetConfig) -> int:
    if ds.max_new_tokens:
        return ds.max_new_tokens
    if ds.kind == "longbench":
        return longbench.MAX_NEW_TOKENS.get(ds.task, 32)
    return 2 if ds.kind == "retrieval" else 32


def render(template: str, row: dict) -> str:
    # str.replace, not str.format: contexts are full of braces (code, JSON)
    return template.replace("{context}", row["context"]).replace("{input}", row["question"])


def suffix_text(mode: int | str, template: str, row: dict, prompt: str) -> str | None:
    """The trailing part of `prompt` prefilled after compression (`generation.kv_suffix`):
    `answer_cue` = its last line (the retrieval split's final `A`, LongBench's `Answer:`),
    `question` = the template's text after {context} (kvpress's split). None for a token count.
    Raises when the mode splits nothing off (or everything)."""
    if isinstance(mode, int):
        return None
    if mode == "answer_cue":
        body = prompt.rstrip("\n")
        suffix = prompt[body.rfind("\n") + 1 :] if "\n" in body else ""
    else:
        head, sep, tail = template.partition("{context}")
        suffix = render(tail, row) if sep else ""
    if not suffix.strip() or suffix == prompt or not prompt.endswith(suffix):
        raise LmlabError(
            f"example {row['example_id']!r}: generation.kv_suffix {mode!r} splits no "
            f"{'last line' if mode == 'answer_cue' else 'question (template text after {context})'}"
            " off its prompt; give a number of tokens instead"
        )
    return suffix


def load_rows(ds: DatasetConfig) -> list[dict]:
    if ds.kind == "retrieval":
        rows = _retrieval_rows(ds)
    elif ds.kind == "longbench" and not ds.files:
        rows = _hub_rows(ds)
    else:
        rows = _table_rows(ds)
    if not rows:
        raise LmlabError(f"dataset {ds.dataset_id}: no rows")
    seen: set[str] = set()
    for r in rows:
        if r["example_id"] in seen:
            raise LmlabError(f"dataset {ds.dataset_id}: example id {r['example_id']!r} repeats")
        seen.add(r["example_id"])
    return rows[: ds.limit] if ds.limit else rows


def _hub_rows(ds: DatasetConfig) -> list[dict]:
    import datasets

    try:
        table = datasets.load_dataset(ds.hf_path, ds.task, split=ds.split)
    except Exception as e:  # offline, unknown task, ...: one line naming what was asked
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise LmlabError(
            f"cannot load {ds.hf_path} task {ds.task} split {ds.split} through `datasets`: "
            f"{first} (offline? give dataset.files in LongBench's row schema)"
        ) from None
    return _convert(list(table), ds, ds.hf_path)


def _table_rows(ds: DatasetConfig) -> list[dict]:
    if not ds.files:
        raise LmlabError(f"dataset kind {ds.kind} needs dataset.files (JSONL or parquet)")
    out: list[dict] = []
    for f in ds.files:
        path = Path(f)
        if not path.is_file():
            raise LmlabError(f"dataset file not found: {path}")
        raw = _read_with_datasets(path) if ds.kind == "longbench" else _read_table(path)
        out += _convert(raw, ds, str(path))
    return out


def _read_with_datasets(path: Path) -> list[dict]:
    """LongBench rows from a local file through `datasets` (the same call as the Hub's data)."""
    import datasets

    builder = "parquet" if path.suffix == ".parquet" else "json"
    try:
        return list(datasets.load_dataset(builder, data_files=str(path), split="train"))
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise LmlabError(f"{path}: cannot read as {builder} through `datasets`: {first}") from None


def _read_table(path: Path) -> list[dict]:
    """Rows of a JSONL or parquet file as plain dicts; bad JSON names file:line."""
    if path.suffix == ".parquet":
        import polars as pl

        return pl.read_parquet(path).to_dicts()
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LmlabError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    return rows


def _convert(raw: list[dict], ds: DatasetConfig, where: str) -> list[dict]:
    f = ds.fields
    need = [f.id, f.context, f.question, f.answers]
    out = []
    for i, row in enumerate(raw, 1):
        missing = [k for k in need if k not in row]
        if missing:
            raise LmlabError(
                f"{where}: row {i} has no field {missing[0]!r} (dataset.fields.* names the "
                f"columns; this row has {', '.join(sorted(row)) or 'none'})"
            )
        answers = row[f.answers]
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not answers:
            raise LmlabError(f"{where}: row {i}: {f.answers!r} must be a non-empty list")
        length = row.get(f.length) if f.length else None
        out.append(
            {
                "example_id": str(row[f.id]),
                "context": str(row[f.context] or ""),
                "question": str(row[f.question] or ""),
                "answers": [str(a) for a in answers],
                "all_classes": row.get("all_classes") or [],
                "dataset_length": int(length) if isinstance(length, int | float) else None,
            }
        )
    return out


def _retrieval_rows(ds: DatasetConfig) -> list[dict]:
    """The retrieval study's eval split: DIR/eval/manifest.json + samples.parquet (as files)."""
    if not ds.path:
        raise LmlabError("dataset kind retrieval needs dataset.path (the split folder, DIR/eval)")
    split = Path(ds.path)
    man = split / "manifest.json"
    if not man.is_file():
        raise LmlabError(f"{split}: no manifest.json, so not a retrieval split folder")
    try:
        manifest = json.loads(man.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LmlabError(f"{man}:{e.lineno}: invalid JSON ({e.msg})") from None
    samples = split / (manifest.get("files") or {}).get("samples", "samples.parquet")
    if not samples.is_file():
        raise LmlabError(f"{split}: the manifest names {samples.name}, which is missing")
    import polars as pl

    table = pl.read_parquet(samples)
    need = ("prompt", "value", "num_pairs")
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise LmlabError(
            f"{samples}: no column {missing[0]!r} (a retrieval samples file has {need})"
        )
    out = []
    for i, row in enumerate(table.iter_rows(named=True)):
        # context = the pairs, question = from the query line on ("Q key\nA"); the prompt is
        # their concatenation, unchanged
        cut = row["prompt"].rfind("\nQ ") + 1
        out.append(
            {
                "example_id": f"{split.name}-{i:05d}",
                "context": row["prompt"][:cut],
                "question": row["prompt"][cut:],
                "answers": [row["value"]],
                "all_classes": [],
                "dataset_length": int(row["num_pairs"]),
            }
        )
    return out


def source_fingerprint(ds: DatasetConfig) -> dict:
    """What identifies the input files (size and mtime), so changed files redo `prepare`."""
    paths = [Path(f) for f in ds.files]
    if ds.kind == "retrieval" and ds.path:
        paths = [Path(ds.path) / "manifest.json", Path(ds.path) / "samples.parquet"]
    out = {}
    for p in paths:
        st = p.stat() if p.exists() else None
        out[str(p)] = [st.st_size, int(st.st_mtime)] if st else None
    return out
