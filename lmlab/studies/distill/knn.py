"""Exact cosine top-K neighbours of every item (self excluded), computed once and cached.

faiss (IndexFlatIP: exact inner product on unit rows) when it is installed, a chunked torch
matmul otherwise; both are exact, so they agree up to the order of ties.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lmlab.errors import LmlabError
from lmlab.paths import atomic_dir, lmlab_home


def check_k(k: int, n: int, what: str = "recipe_args.k") -> None:
    if k >= n:
        raise LmlabError(
            f"{what}={k} but the teacher has {n} items: at most {n - 1} neighbours exist "
            "(self excluded)"
        )


def _torch_topk(emb: np.ndarray, rows: np.ndarray, k: int, chunk: int = 1024):
    x = torch.from_numpy(emb)
    idx_out, sim_out = [], []
    for start in range(0, len(rows), chunk):
        q = torch.from_numpy(rows[start : start + chunk])
        sims = x[q] @ x.T
        sims[torch.arange(len(q)), q] = -float("inf")  # never its own neighbour
        sim, idx = sims.topk(k, dim=1)
        idx_out.append(idx)
        sim_out.append(sim)
    return torch.cat(idx_out).numpy(), torch.cat(sim_out).numpy()


def _faiss_topk(emb: np.ndarray, rows: np.ndarray, k: int):
    import faiss

    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(np.ascontiguousarray(emb))
    sim, idx = index.search(np.ascontiguousarray(emb[rows]), k + 1)
    out_idx = np.empty((len(rows), k), dtype=np.int64)
    out_sim = np.empty((len(rows), k), dtype=np.float32)
    for i, r in enumerate(rows):
        keep = idx[i] != r
        if keep.all():  # self lost a tie: drop the last instead
            keep[-1] = False
        out_idx[i], out_sim[i] = idx[i][keep][:k], sim[i][keep][:k]
    return out_idx, out_sim


def exact_topk(
    emb: np.ndarray, k: int, rows: np.ndarray | None = None, backend: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """(indices [R, k], cosines [R, k]) of the k nearest items to each row (unit rows), best first."""
    n = emb.shape[0]
    check_k(k, n)
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    if backend == "auto":
        try:
            import faiss  # noqa: F401

            backend = "faiss"
        except ImportError:
            backend = "torch"
    if backend == "faiss":
        return _faiss_topk(emb, rows, k)
    return _torch_topk(emb, rows, k)


def cached_topk(emb: np.ndarray, k: int, teacher_hash: str) -> tuple[np.ndarray, np.ndarray]:
    """exact_topk over every item, cached per (teacher, k) under LMLAB_HOME."""
    check_k(k, emb.shape[0])
    folder: Path = lmlab_home() / "distill" / "knn" / f"{teacher_hash}-k{k}"
    if not (folder / "idx.npy").exists():
        idx, sim = exact_topk(emb, k)
        with atomic_dir(folder) as tmp:
            np.save(tmp / "idx.npy", idx.astype(np.int64))
            np.save(tmp / "sim.npy", sim.astype(np.float32))
    return np.load(folder / "idx.npy"), np.load(folder / "sim.npy")
