"""A built-in generated corpus, so `lmlab train --profile smoke` runs from nothing, offline.

"toy" is a tiny world of facts (each thing has a colour and a place) told as plain sentences
(pretraining) and as question/answer chats (SFT). It has structure a small model learns in
seconds, so a falling loss means something. Built once per LMLAB_HOME and reused.
"""

from __future__ import annotations

import random
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.paths import atomic_dir, lmlab_home

THINGS = [
    "cat",
    "dog",
    "robot",
    "lamp",
    "boat",
    "tree",
    "kettle",
    "violin",
    "drum",
    "kite",
    "apple",
    "clock",
    "chair",
    "mirror",
    "rocket",
    "teapot",
    "pencil",
    "garden",
    "bridge",
    "tower",
]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
PLACES = ["kitchen", "attic", "harbor", "forest", "library", "station", "market", "valley"]
VERBS = ["sees", "likes", "follows", "finds", "paints", "carries"]
VERSION = "toy-v1"


def _world(seed: int = 1234) -> dict[str, tuple[str, str]]:
    rng = random.Random(seed)
    return {t: (rng.choice(COLOURS), rng.choice(PLACES)) for t in THINGS}


def toy_documents(n: int, seed: int) -> list[str]:
    world, rng = _world(), random.Random(seed)
    docs = []
    for _ in range(n):
        lines = []
        for _ in range(rng.randint(3, 7)):
            a, b = rng.sample(THINGS, 2)
            colour, place = world[a]
            lines.append(
                rng.choice(
                    [
                        f"The {a} is {colour}.",
                        f"The {a} lives in the {place}.",
                        f"The {colour} {a} {rng.choice(VERBS)} the {b}.",
                        f"In the {place} there is a {colour} {a}.",
                    ]
                )
            )
        docs.append(" ".join(lines))
    return docs


def toy_conversations(n: int, seed: int) -> list[list[dict]]:
    world, rng = _world(), random.Random(seed)
    convs = []
    for _ in range(n):
        thing = rng.choice(THINGS)
        colour, place = world[thing]
        q, a = rng.choice(
            [
                (f"What colour is the {thing}?", f"The {thing} is {colour}."),
                (f"Where is the {thing}?", f"The {thing} is in the {place}."),
            ]
        )
        convs.append([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
    return convs


def builtin_dataset(name: str, phase: str, root: Path | None = None) -> tuple[Path, Path]:
    """(shard dir, tokenizer dir) of a built-in corpus, generating it on first use."""
    if name != "toy":
        raise LmlabError(f"unknown built-in corpus '{name}' (available: toy)")
    root = Path(root or lmlab_home() / "builtin") / VERSION
    tok_dir, data_dir = root / "tokenizer", root / phase
    if (data_dir / "train" / "meta.json").exists() and (data_dir / "val" / "meta.json").exists():
        return data_dir, tok_dir
    _build(root, phase)
    return data_dir, tok_dir


def _build(root: Path, phase: str) -> None:
    from lmlab.data.shards import ShardWriter
    from lmlab.text.chat import render_conversation
    from lmlab.text.tokenizer import load_tokenizer, train_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    tok_dir = root / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        corpus = root / "corpus.txt"
        chats = [f"{c[0]['content']} {c[1]['content']}" for c in toy_conversations(500, 7)]
        corpus.write_text("\n".join(toy_documents(1500, 0) + chats) + "\n")
        with atomic_dir(tok_dir) as tmp:
            train_tokenizer([corpus], kind="bpe", vocab_size=384, out=tmp, progress=False)
    tok = load_tokenizer(tok_dir)
    meta = {**tok.meta(), "path": str(tok_dir)}
    kind = "sft" if phase == "sft" else "pretrain"
    for split, n, seed in (("train", 3000, 1), ("val", 200, 2)):
        out = root / phase / split
        with ShardWriter(
            out, meta, kind=kind, source=f"builtin:{VERSION}", split=split, seed=seed
        ) as w:
            if kind == "sft":
                for conv in toy_conversations(n, seed):
                    ids, mask = render_conversation(tok, conv)
                    w.add_document(ids[1:], mask[1:])  # the writer adds bos itself
            else:
                for doc in toy_documents(n, seed):
                    w.add_document(tok.encode(doc))
