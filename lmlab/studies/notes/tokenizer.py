"""`lmlab notes tokenizer`: the core SentencePiece trainer fed with the notes sources.

The core `lmlab tokenizer train --kind sentencepiece --input-glob ...` reads files as they are;
this command feeds it what the caches will hold instead: Roam pages with the markup removed, the
primer's message text (the role prefixes are control tokens later, not text), and optionally a
byte budget of fineweb-edu and wikitext-103 (the seed's --fineweb_bytes / --include_wikitext).
Special ids come out as bos=1, system=3, user=4, assistant=5, eot=6.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lmlab.data import sources
from lmlab.studies.notes.paths import SAMPLE_PRIMER, SAMPLE_ROAM_DIR
from lmlab.studies.notes.primer import load_primer
from lmlab.studies.notes.roam import load_pages
from lmlab.text.tokenizer import Tokenizer, load_tokenizer, train_tokenizer

DEFAULT_VOCAB = 16_000  # the seed's
SAMPLE_VOCAB = 1_024  # what the shipped sample (~20 KB of text) supports comfortably


@dataclass
class TokenizerInputs:
    roam_dir: Path = SAMPLE_ROAM_DIR
    primer: Path | None = SAMPLE_PRIMER
    fineweb_bytes: int = 0
    wikitext_bytes: int = 0
    fineweb_path: Path | None = None
    wikitext_path: Path | None = None
    seed: int = 42

    @property
    def is_sample(self) -> bool:
        same = Path(self.roam_dir).resolve() == SAMPLE_ROAM_DIR.resolve()
        primer_ok = self.primer is None or Path(self.primer).resolve() == SAMPLE_PRIMER.resolve()
        return same and primer_ok and not (self.fineweb_bytes or self.wikitext_bytes)


def default_vocab(inputs: TokenizerInputs) -> int:
    return SAMPLE_VOCAB if inputs.is_sample else DEFAULT_VOCAB


def _take_bytes(texts, budget: int) -> str:
    out, n = [], 0
    for text in texts:
        out.append(text)
        n += len(text.encode("utf-8"))
        if n >= budget:
            break
    return "\n".join(out)


def write_corpus(inputs: TokenizerInputs, folder: Path) -> list[Path]:
    """One text file per source in `folder`; returns the files."""
    files = []
    pages = load_pages(inputs.roam_dir)
    files.append(folder / "roam.txt")
    files[-1].write_text("\n".join(p.text for p in pages), encoding="utf-8")
    if inputs.primer is not None:
        primer = load_primer(inputs.primer)
        text = "\n".join(m["content"] for d in primer.dialogues for m in d.messages)
        files.append(folder / "primer.txt")
        files[-1].write_text(text + "\n", encoding="utf-8")
    if inputs.fineweb_bytes:
        docs = sources.fineweb_edu_texts(inputs.fineweb_path, seed=inputs.seed)
        files.append(folder / "fineweb_edu.txt")
        files[-1].write_text(_take_bytes(docs, inputs.fineweb_bytes), encoding="utf-8")
    if inputs.wikitext_bytes:
        docs = sources.wikitext_documents("train", inputs.wikitext_path)
        files.append(folder / "wikitext.txt")
        files[-1].write_text(_take_bytes(docs, inputs.wikitext_bytes), encoding="utf-8")
    return files


def train_notes_tokenizer(
    inputs: TokenizerInputs,
    out: Path,
    vocab_size: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> tuple[Tokenizer, bool]:
    """(tokenizer, trained): an existing tokenizer in `out` is kept unless `force`."""
    out = Path(out).expanduser()
    if not force and (out / "spm.model").is_file():
        return load_tokenizer(out), False
    vocab = vocab_size or default_vocab(inputs)
    with tempfile.TemporaryDirectory(prefix="lmlab-notes-tok-") as tmp:
        files = write_corpus(inputs, Path(tmp))
        tok = train_tokenizer(
            files,
            kind="sentencepiece",
            vocab_size=vocab,
            out=out,
            seed=inputs.seed,
            progress=progress,
        )
    info = dict(tok.training_info or {})
    info["files"] = [f.name for f in files]  # the temporary corpus is gone; record its sources
    info["notes_inputs"] = {
        "roam_dir": str(Path(inputs.roam_dir).resolve()),
        "primer": str(Path(inputs.primer).resolve()) if inputs.primer else None,
        "fineweb_bytes": inputs.fineweb_bytes,
        "wikitext_bytes": inputs.wikitext_bytes,
        "fineweb_path": str(inputs.fineweb_path) if inputs.fineweb_path else None,
        "wikitext_path": str(inputs.wikitext_path) if inputs.wikitext_path else None,
    }
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return tok, True
