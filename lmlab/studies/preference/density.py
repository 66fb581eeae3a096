"""Cosine k-NN density of prompt embeddings and the weights that up-weight rare prompts.

density_i = mean cosine similarity of prompt i to its k nearest other prompts; a prompt inside a
tight cluster has a density near 1, an isolated one near 0. weight_i = 1 / (density_i + eps):
the *rare* prompt gets the larger weight (one version of the seed did the opposite). A negative
mean cosine (possible, if rare, for an outlier) is clamped to 0 so that the weight stays finite
and positive. Two normalisations are written: sum 1 (sampling probabilities, the seed's file)
and mean 1 (per-pair loss weights, so the loss keeps its scale).

faiss (exact inner-product index) is used when installed, exact torch matmuls otherwise; both
give the same densities (a test checks it).
"""

from __future__ import annotations

import numpy as np
import torch

from lmlab.errors import LmlabError


def normalise_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def check_k(k: int, n: int) -> None:
    if k < 1:
        raise LmlabError(f"--k must be at least 1, got {k}")
    if k >= n:
        raise LmlabError(
            f"--k {k} needs more than {k} prompts (each has k neighbours besides itself); "
            f"there are {n}: use --k {max(n - 1, 1)} or less"
        )


def knn_similarities_torch(emb: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """[N, k] cosine similarities of each row to its k nearest other rows, largest first."""
    x = torch.from_numpy(normalise_rows(emb))
    out = []
    for start in range(0, len(x), chunk):
        sims = x[start : start + chunk] @ x.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = -float("inf")  # a prompt is not its own neighbour
        out.append(sims.topk(k, dim=1).values)
    return torch.cat(out).numpy()


def knn_similarities_faiss(emb: np.ndarray, k: int) -> np.ndarray:
    import faiss

    x = np.ascontiguousarray(normalise_rows(emb))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, idx = index.search(x, k + 1)
    out = np.empty((len(x), k), dtype=np.float32)
    for i in range(len(x)):
        # drop the row itself; among exact duplicates any one copy may come first
        where = np.flatnonzero(idx[i] == i)
        drop = where[0] if len(where) else k
        out[i] = np.delete(sims[i], drop)[:k]
    return out


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def knn_density(emb: np.ndarray, k: int, backend: str = "auto") -> tuple[np.ndarray, str]:
    """(density [N], backend used). backend: auto | faiss | torch."""
    check_k(k, len(emb))
    if backend not in ("auto", "faiss", "torch"):
        raise LmlabError(f"unknown k-NN backend {backend!r} (expected auto, faiss or torch)")
    if backend == "faiss" or (backend == "auto" and faiss_available()):
        if not faiss_available():
            raise LmlabError("the faiss backend needs the faiss-cpu package")
        sims, used = knn_similarities_faiss(emb, k), "faiss"
    else:
        sims, used = knn_similarities_torch(emb, k), "torch"
    return sims.mean(axis=1).astype(np.float32), used


def density_weights(density: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(weights summing to 1, the same weights with mean 1)."""
    if eps <= 0:
        raise LmlabError(f"--eps must be positive, got {eps}")
    raw = 1.0 / (np.clip(density.astype(np.float64), 0.0, None) + eps)
    return (raw / raw.sum()).astype(np.float32), (raw / raw.mean()).astype(np.float32)


def weight_summary(weights: np.ndarray) -> dict:
    w = np.asarray(weights, dtype=np.float64)
    med = float(np.median(w))
    return {
        "min": float(w.min()),
        "median": med,
        "max": float(w.max()),
        "ratio_max_median": float(w.max() / med) if med > 0 else None,
        "ratio_max_min": float(w.max() / w.min()) if w.min() > 0 else None,
        "sum": float(w.sum()),
    }
