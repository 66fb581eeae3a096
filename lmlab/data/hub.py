"""Hugging Face datasets behind lmlab's corpora: which Hub dataset each is, whether the Hub can
be reached, and streaming its rows (or a local copy's, in the same schema).

Every read streams (`streaming=True`), so nothing is downloaded beyond what is read and no
Arrow cache is written. `local=` is a file or folder of .parquet / .jsonl / .json (and .txt for
the text corpora) in the same schema, loaded with the packaged `parquet` / `json` / `text`
builders; that is how the tests run, and how a machine without the internet provides a corpus.
Without `local`, the Hub is checked first (offline mode, then a few-second probe), so a missing
corpus is a `SourceUnavailable` error naming the option that provides it, never a hang.
"""

from __future__ import annotations

import os
import re
import threading
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError


class SourceUnavailable(LmlabError):
    """A corpus that cannot be read here (offline, unreachable, or a bad local path)."""


@dataclass(frozen=True)
class HubDataset:
    key: str  # lmlab's name for it
    path: str  # the Hub repository
    name: str | None  # the Hub config
    splits: tuple[str, ...]  # splits the Hub dataset has
    columns: tuple[str, ...]  # columns the loader needs
    text_ok: bool = False  # whether plain .txt files (one row per line, column "text") fit
    data_dir: str | None = None  # a subfolder of the Hub repository (e.g. hh-rlhf's subsets)


HUB = {
    "fineweb_edu": HubDataset(
        "fineweb_edu", "HuggingFaceFW/fineweb-edu", "sample-10BT", ("train",), ("text",), True
    ),
    "wikitext": HubDataset(
        "wikitext",
        "Salesforce/wikitext",
        "wikitext-103-raw-v1",
        ("train", "validation", "test"),
        ("text",),
        True,
    ),
    "dolly15k": HubDataset(
        "dolly15k",
        "databricks/databricks-dolly-15k",
        None,
        ("train",),
        ("instruction", "context", "response"),
    ),
    "oasst1": HubDataset(
        "oasst1",
        "OpenAssistant/oasst1",
        None,
        ("train", "validation"),
        ("message_id", "parent_id", "text", "role"),
    ),
}

_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text"}
_VAL_NAME = re.compile(r"(^|[^a-z])(val|valid|validation)([^a-z]|$)", re.IGNORECASE)
_TEST_NAME = re.compile(r"(^|[^a-z])test([^a-z]|$)", re.IGNORECASE)


# ---------------------------------------------------------------- availability


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hf_offline() -> bool:
    return _truthy("HF_DATASETS_OFFLINE") or _truthy("HF_HUB_OFFLINE")


_PROBED: dict[str, bool] = {}


def hub_reachable(timeout: float | None = None) -> bool:
    """Can the Hub answer within `timeout` seconds (env LMLAB_HUB_TIMEOUT, default 5)? Runs in a
    daemon thread, so not even a stuck DNS lookup can hang the caller. Once unreachable, a
    process does not ask again."""
    timeout = float(timeout or os.environ.get("LMLAB_HUB_TIMEOUT", 5))
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if _PROBED.get(endpoint) is False:
        return False
    ok: list[bool] = []

    def probe() -> None:
        try:
            req = urllib.request.Request(f"{endpoint}/api/datasets?limit=1", method="HEAD")
            urllib.request.urlopen(req, timeout=timeout).close()
            ok.append(True)
        except Exception:  # any failure means "not reachable now"
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1)
    _PROBED[endpoint] = bool(ok and ok[0])
    return _PROBED[endpoint]


def _how_to_provide(spec: HubDataset, option: str | None) -> str:
    kinds = ".parquet/.jsonl" + ("/.txt" if spec.text_ok else "")
    cols = ("columns " if len(spec.columns) > 1 else "a column ") + ", ".join(spec.columns)
    where = f"pass {option} PATH" if option else "pass a local path"
    return (
        f"{where} (a {kinds} file or folder with {cols}; e.g. a copy of the Hub "
        f"dataset {spec.path} made on a machine with the internet)"
    )


# ---------------------------------------------------------------- opening rows


def _local_files(spec: HubDataset, local: Path, option: str | None) -> dict[str, list[str]]:
    """{split: files} of a local copy. In a folder, files named like *val*/*validation* are the
    validation split, *test* files are ignored, the rest are train."""
    if not local.exists():
        raise SourceUnavailable(
            f"{spec.key}: {local} does not exist; {_how_to_provide(spec, option)}"
        )
    allowed = {s for s, b in _BUILDERS.items() if spec.text_ok or b != "text"}
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    files = [f for f in files if f.suffix.lower() in allowed]
    if not files:
        raise SourceUnavailable(
            f"{spec.key}: no {'/'.join(sorted(allowed))} files in {local}; "
            f"{_how_to_provide(spec, option)}"
        )
    builders = {_BUILDERS[f.suffix.lower()] for f in files}
    if len(builders) > 1:
        raise SourceUnavailable(
            f"{spec.key}: {local} mixes file kinds ({', '.join(sorted(builders))}); use one kind"
        )
    if local.is_file():
        return {"train": [str(local)]}
    split: dict[str, list[str]] = {}
    for f in files:
        rel = str(f.relative_to(local))
        if _TEST_NAME.search(rel) and not _VAL_NAME.search(rel):
            continue
        split.setdefault("validation" if _VAL_NAME.search(rel) else "train", []).append(str(f))
    return split


def open_rows(
    key: str,
    split: str = "train",
    local: str | Path | None = None,
    option: str | None = None,
) -> Iterator[dict] | None:
    """The rows of one split of a corpus, streamed, after a check of the first row's columns.

    Returns None when the corpus (or its local copy) has no such split: callers derive one, e.g.
    by hash. Raises SourceUnavailable (naming `option`, the CLI flag that provides a local copy)
    when the corpus cannot be read.
    """
    ds = open_dataset(key, split, local, option)
    return None if ds is None else checked_rows(ds, HUB[key], str(local or HUB[key].path))


def open_dataset(
    key: str,
    split: str = "train",
    local: str | Path | None = None,
    option: str | None = None,
) -> Any:
    """The streaming `datasets.IterableDataset` behind `open_rows` (None: no such split)."""
    spec = HUB[key]
    try:
        import datasets
    except ImportError:
        raise SourceUnavailable(
            f"{key}: the `datasets` package is not installed (pip install 'lmlab[hf]')"
        ) from None
    if local is not None:
        local = Path(local).expanduser()
        files = _local_files(spec, local, option)
        if split not in files:
            return None
        builder = _BUILDERS[Path(files[split][0]).suffix.lower()]
        try:
            ds = datasets.load_dataset(
                builder, data_files={split: files[split]}, split=split, streaming=True
            )
        except Exception as e:
            raise SourceUnavailable(f"{key}: cannot read {local}: {_first_line(e)}") from None
        return ds
    if split not in spec.splits:
        return None
    if hf_offline():
        raise SourceUnavailable(
            f"{key}: the Hub dataset {spec.path} cannot be streamed in offline mode "
            f"(HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set); {_how_to_provide(spec, option)}"
        )
    if not hub_reachable():
        raise SourceUnavailable(
            f"{key}: the Hugging Face Hub is not reachable from here, so {spec.path} cannot be "
            f"streamed; {_how_to_provide(spec, option)}"
        )
    try:
        ds = datasets.load_dataset(
            spec.path, spec.name, data_dir=spec.data_dir, split=split, streaming=True
        )
    except Exception as e:
        raise SourceUnavailable(
            f"{key}: load_dataset({spec.path!r}, {spec.name!r}) failed: {_first_line(e)}; "
            f"{_how_to_provide(spec, option)}"
        ) from None
    return ds


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def checked_rows(ds: Iterable[dict], spec: HubDataset, where: str) -> Iterator[dict]:
    """Rows, after checking that the first one has the columns the loader needs; a read error
    (a malformed file, a dropped connection) becomes one line naming the corpus."""
    it = iter(ds)
    first = True
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except Exception as e:
            raise SourceUnavailable(f"{spec.key}: reading {where} failed: {_first_line(e)}") from e
        if first:
            missing = [c for c in spec.columns if c not in row]
            if missing:
                raise SourceUnavailable(
                    f"{spec.key}: {where} lacks the column(s) {', '.join(missing)} "
                    f"(has: {', '.join(row)}); expected the schema of {spec.path}"
                )
            first = False
        yield row
