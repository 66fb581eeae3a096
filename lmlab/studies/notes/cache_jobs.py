"""What goes into each notes cache: one `Job` per (kind, source), documents made lazily.

Splits: roam by file (hash of the path), primer by a seeded shuffle (the same dialogues are val
in the pretrain and the SFT cache), fineweb-edu's first `fineweb_val_tokens` of the seeded
stream are val and the following `fineweb_train_tokens` train, wikitext and oasst1 use their own
validation splits, dolly15k (train only) holds out `heldout_frac` by hash.

Pretraining text of the primer is its dialogues rendered with the chat template (role tokens
and all), so pretraining already sees the format that SFT and chat use. SFT documents are
rendered with `sft_context` as the limit: the oldest turns are dropped to fit (counted as
"truncated"), and a conversation whose last exchange alone does not fit is left out (counted
as "too long"); nothing is ever cut mid-answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from lmlab.data import sources
from lmlab.errors import LmlabError
from lmlab.studies.notes.cache_spec import (
    PRETRAIN_SOURCES,
    SFT_SOURCES,
    BuildOptions,
    Doc,
    Job,
)
from lmlab.studies.notes.primer import load_primer, split_dialogues
from lmlab.studies.notes.roam import find_pages, load_pages, split_pages
from lmlab.text.chat import render_conversation, render_conversation_info
from lmlab.text.tokenizer import Tokenizer


def content_hash(files: Iterable[Path], root: Path | None = None) -> str:
    h = hashlib.sha256()
    for f in files:
        name = f.relative_to(root).as_posix() if root else f.name
        h.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def stat_hash(path: Path | None) -> str | None:
    """Cheap fingerprint of a (possibly large) local corpus: names, sizes and mtimes."""
    if path is None:
        return None
    path = Path(path).expanduser()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]


def _where(name: str, local: Path | None) -> str:
    spec = sources.HUB[name]
    return str(Path(local).expanduser().resolve()) if local else f"{spec.path}:{spec.name}"


# ---------------------------------------------------------------- documents


def _encode_all(tok: Tokenizer, texts: list[str]) -> Iterator[list[int]]:
    for ids in tok.encode_batch(texts):
        if ids:
            yield ids


def _texts(tok: Tokenizer, texts: Iterable[str], budget: int | None) -> Iterator[Doc]:
    for _, ids in sources.take_tokens(texts, tok.encode_batch, budget):
        yield ids


def _conversations(
    job: Job, split: str, tok: Tokenizer, convs: Iterable[list[dict]], context: int, budget=None
) -> Iterator[Doc]:
    def rendered() -> Iterator[Doc]:
        for conv in convs:
            try:
                r = render_conversation_info(tok, conv, max_tokens=context)
            except LmlabError:
                job.count(split, "too long")
                continue
            if r.dropped_turns:
                job.count(split, "truncated")
            yield r.ids[1:], r.loss_mask[1:]  # the writer adds bos itself

    # a document costs its tokens with the bos the writer adds
    return sources.within_budget(rendered(), budget, tokens=lambda doc: len(doc[0]) + 1)


def _heldout(items: Iterable, key, frac: float, seed: int, want_val: bool) -> Iterator:
    for item in items:
        if (sources.stable_fraction(key(item), seed) < frac) == want_val:
            yield item


# ---------------------------------------------------------------- jobs


def roam_job(opts: BuildOptions, tok: Tokenizer) -> Job:
    root = Path(opts.roam_dir).expanduser()
    files = find_pages(root)  # fails now, with a clear message, if there is no markdown
    key = {
        "inputs": content_hash(files, root),
        "roam_dir": str(root.resolve()),
        "val_frac": opts.val_frac,
        "seed": opts.seed,
    }

    def produce():
        train, val = split_pages(load_pages(root), opts.val_frac, opts.seed)
        return {
            "train": _encode_all(tok, [p.text for p in train]),
            "val": _encode_all(tok, [p.text for p in val]),
        }

    return Job("pretrain", "roam", key, produce)


def primer_jobs(opts: BuildOptions, tok: Tokenizer) -> tuple[Job, Job]:
    primer = load_primer(opts.primer)  # parse errors surface before anything is built
    train, val = split_dialogues(primer, opts.val_frac, opts.seed)
    key = {
        "inputs": content_hash([Path(opts.primer).expanduser()]),
        "primer": str(Path(opts.primer).expanduser().resolve()),
        "val_frac": opts.val_frac,
        "seed": opts.seed,
        "dialogues": {"train": len(train), "val": len(val), "empty_blocks": primer.empty_blocks},
    }

    def pretrain():
        def rendered(ds):
            for d in ds:
                yield render_conversation(tok, d.messages)[0][1:]

        return {"train": rendered(train), "val": rendered(val)}

    sft_job = Job("sft", "primer", {**key, "sft_context": opts.sft_context}, lambda: {})

    def sft():
        return {
            s: _conversations(sft_job, s, tok, [d.messages for d in ds], opts.sft_context)
            for s, ds in (("train", train), ("val", val))
        }

    sft_job.produce = sft
    return Job("pretrain", "primer", key, pretrain), sft_job


def fineweb_job(opts: BuildOptions, tok: Tokenizer) -> Job:
    key = {
        "corpus": _where("fineweb_edu", opts.fineweb_path),
        "inputs": stat_hash(opts.fineweb_path),
        "train_tokens": opts.fineweb_train_tokens,
        "val_tokens": opts.fineweb_val_tokens,
        "seed": opts.seed,
    }

    def produce():
        # one stream: its first val_tokens are val, the next train_tokens train (disjoint)
        texts = sources.fineweb_edu_texts(opts.fineweb_path, seed=opts.seed)
        pairs = sources.encode_stream(texts, tok.encode_batch)
        return {
            "val": (ids for _, ids in sources.within_budget(pairs, opts.fineweb_val_tokens)),
            "train": (ids for _, ids in sources.within_budget(pairs, opts.fineweb_train_tokens)),
        }

    job = Job("pretrain", "fineweb_edu", key, produce)
    job.totals = {"train": opts.fineweb_train_tokens, "val": opts.fineweb_val_tokens}
    return job


def wikitext_job(opts: BuildOptions, tok: Tokenizer) -> Job:
    key = {
        "corpus": _where("wikitext", opts.wikitext_path),
        "inputs": stat_hash(opts.wikitext_path),
        "train_tokens": opts.wikitext_train_tokens,
        "heldout_frac": opts.heldout_frac,
        "seed": opts.seed,
    }

    def produce():
        path = opts.wikitext_path
        has_val = next(iter(sources.wikitext_documents("validation", path)), None) is not None
        if has_val:
            train = sources.wikitext_documents("train", path)
            val = sources.wikitext_documents("validation", path)
        else:  # a local copy without validation files: hold out articles by hash
            train, val = (
                _heldout(
                    sources.wikitext_documents("train", path),
                    lambda t: t[:200],
                    opts.heldout_frac,
                    opts.seed,
                    want,
                )
                for want in (False, True)
            )
        return {
            "train": _texts(tok, train, opts.wikitext_train_tokens),
            "val": _texts(tok, val, None),
        }

    job = Job("pretrain", "wikitext", key, produce)
    job.totals = {"train": opts.wikitext_train_tokens}
    return job


def _sft_job(name: str, key: dict, opts: BuildOptions, tok: Tokenizer, splits) -> Job:
    """An SFT cache job: `splits()` gives (train, val) conversations, rendered here."""
    job = Job("sft", name, key, lambda: {})

    def produce():
        train, val = splits()
        return {
            "train": _conversations(
                job, "train", tok, train, opts.sft_context, opts.sft_train_tokens
            ),
            "val": _conversations(job, "val", tok, val, opts.sft_context),
        }

    job.produce = produce
    job.totals = {"train": opts.sft_train_tokens}
    return job


def _sft_key(corpus: str, path, opts: BuildOptions, **extra) -> dict:
    return {
        "corpus": _where(corpus, path),
        "inputs": stat_hash(path),
        **extra,
        "train_tokens": opts.sft_train_tokens,
        "heldout_frac": opts.heldout_frac,
        "sft_context": opts.sft_context,
        "seed": opts.seed,
    }


def dolly_job(opts: BuildOptions, tok: Tokenizer) -> Job:
    def first_message(conv):
        return conv[0]["content"] + "\0" + conv[-1]["content"]

    def splits():
        return tuple(
            _heldout(
                sources.dolly_conversations(opts.dolly_path),
                first_message,
                opts.heldout_frac,
                opts.seed,
                held_out,
            )
            for held_out in (False, True)
        )

    return _sft_job("dolly15k", _sft_key("dolly15k", opts.dolly_path, opts), opts, tok, splits)


def oasst_job(opts: BuildOptions, tok: Tokenizer) -> Job:
    def splits():
        path, lang = opts.oasst_path, opts.oasst_lang
        val = list(sources.oasst1_threads("validation", path, lang))
        train: Iterable[list[dict]] = sources.oasst1_threads("train", path, lang)
        if not val:  # a local copy without validation files: hold out threads by hash

            def first(conv):
                return conv[0]["content"]

            all_threads = list(train)
            train = list(_heldout(all_threads, first, opts.heldout_frac, opts.seed, False))
            val = list(_heldout(all_threads, first, opts.heldout_frac, opts.seed, True))
        return train, val

    key = _sft_key("oasst1", opts.oasst_path, opts, lang=opts.oasst_lang)
    return _sft_job("oasst1", key, opts, tok, splits)


def make_jobs(opts: BuildOptions, tok: Tokenizer) -> list[Job]:
    """The jobs `opts.only` asks for: pretrain caches first, then SFT, in a fixed order."""
    jobs: dict[tuple[str, str], Job] = {}
    wanted = set(opts.only)
    if "primer" in wanted:
        pre, sft = primer_jobs(opts, tok)
        jobs["pretrain", "primer"], jobs["sft", "primer"] = pre, sft
    makers = {
        ("pretrain", "fineweb_edu"): fineweb_job,
        ("pretrain", "wikitext"): wikitext_job,
        ("pretrain", "roam"): roam_job,
        ("sft", "dolly15k"): dolly_job,
        ("sft", "oasst1"): oasst_job,
    }
    for (kind, name), make in makers.items():
        if name in wanted:
            jobs[kind, name] = make(opts, tok)
    order = [("pretrain", n) for n in PRETRAIN_SOURCES] + [("sft", n) for n in SFT_SOURCES]
    return [jobs[k] for k in order if k in jobs]
