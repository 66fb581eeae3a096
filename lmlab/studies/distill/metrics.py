"""How well an embedding keeps the teacher's neighbours, on held-out queries (self excluded).

For a query q, T = the teacher's top-k items and S = the candidate embedding's top-k (cosine):
  recall@k        |S ∩ T| / k
  overlap@k       |S ∩ T| / |S ∪ T|  (Jaccard)
  ndcg@k          graded: an item of T has gain = its teacher cosine to q, others 0;
                  ideal = T in teacher order; discount 1 / log2(rank + 1)
  ndcg@k_binary   the same with gain 1 for every item of T
Baselines at the same dim: PCA (fit on the training items), a seeded Gaussian random
projection, and the teacher's first `dim` coordinates — each re-normalised.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def topk_excluding_self(emb: torch.Tensor, queries: torch.Tensor, k: int, chunk: int = 1024):
    """(idx [Q, k], sim [Q, k]) of each query's k nearest items in `emb` (unit rows), self out."""
    idx_out, sim_out = [], []
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        sims = emb[q] @ emb.T
        sims[torch.arange(len(q)), q] = -math.inf
        sim, idx = sims.topk(k, dim=1)
        idx_out.append(idx)
        sim_out.append(sim)
    return torch.cat(idx_out), torch.cat(sim_out)


def per_query_scores(student_idx, teacher_idx, teacher_sim) -> dict[str, torch.Tensor]:
    """Per-query recall, overlap, graded and binary nDCG of ranked lists [Q, k] against [Q, k]."""
    k = teacher_idx.shape[1]
    hit = student_idx[:, :, None] == teacher_idx[:, None, :]  # [Q, k(student), k(teacher)]
    inter = hit.any(dim=2).float().sum(dim=1)
    disc = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float32))
    rel = teacher_sim.float().clamp_min(0.0)  # a gain is never negative
    gain = (hit.float() * rel[:, None, :]).sum(dim=2)  # teacher cos of each hit, else 0
    ideal = (rel * disc).sum(dim=1)
    binary = hit.any(dim=2).float()
    return {
        "recall": inter / k,
        "overlap": inter / (2 * k - inter),
        "ndcg": (gain * disc).sum(dim=1) / ideal.clamp_min(1e-12),
        "ndcg_binary": (binary * disc).sum(dim=1) / disc.sum(),
    }


class NeighbourEval:
    """The teacher's top-k of fixed queries, computed once; scores any embedding of all items."""

    def __init__(self, teacher: torch.Tensor, queries: torch.Tensor, k: int = 10):
        self.queries, self.k = queries, k
        self.teacher_idx, self.teacher_sim = topk_excluding_self(_unit(teacher), queries, k)

    def per_query(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        idx, _ = topk_excluding_self(_unit(emb), self.queries.to(emb.device), self.k)
        return per_query_scores(idx.cpu(), self.teacher_idx.cpu(), self.teacher_sim.cpu())

    def score(self, emb: torch.Tensor, prefix: str = "vs_teacher_") -> dict[str, float]:
        k = self.k
        scores = self.per_query(emb)
        return {
            f"{prefix}recall{k}": scores["recall"].mean().item(),
            f"{prefix}ndcg{k}": scores["ndcg"].mean().item(),
            f"{prefix}ndcg{k}_binary": scores["ndcg_binary"].mean().item(),
            f"{prefix}overlap{k}": scores["overlap"].mean().item(),
        }


# ---------------------------------------------------------------- baselines


def pca_projection(teacher: np.ndarray, fit_rows: np.ndarray, dim: int) -> np.ndarray:
    x = teacher[fit_rows].astype(np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return ((teacher - mean) @ vt[:dim].T).astype(np.float32)


def random_projection(teacher: np.ndarray, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((teacher.shape[1], dim)) / math.sqrt(dim)
    return (teacher @ proj).astype(np.float32)


def baseline_embeddings(
    teacher: np.ndarray, fit_rows: np.ndarray, dim: int, names: list[str], seed: int = 0
) -> dict[str, np.ndarray]:
    """{name: [N, dim]} for the baselines asked (dim capped at the teacher's)."""
    dim = min(dim, teacher.shape[1])
    out = {}
    for name in names:
        if name == "pca":
            out[name] = pca_projection(teacher, fit_rows, min(dim, len(fit_rows)))
        elif name == "random":
            out[name] = random_projection(teacher, dim, seed)
        elif name == "truncate":
            out[name] = teacher[:, :dim].copy()
    return out
