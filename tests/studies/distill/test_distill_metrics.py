"""recall@10 / nDCG@10 / overlap@10 and the exact kNN against brute-force Python."""

import math

import numpy as np
import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.studies.distill.knn import cached_topk, exact_topk
from lmlab.studies.distill.metrics import NeighbourEval, baseline_embeddings


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_ranking(emb, q, k):
    sims = [(float(emb[q] @ emb[j]), j) for j in range(len(emb)) if j != q]
    sims.sort(key=lambda t: -t[0])
    return [j for _, j in sims[:k]], {j: s for s, j in sims}


def brute_scores(teacher, student, queries, k=10):
    out = {"recall": [], "ndcg": [], "ndcg_binary": [], "overlap": []}
    for q in queries:
        t_top, t_sim = brute_ranking(teacher, q, k)
        s_top, _ = brute_ranking(student, q, k)
        inter = len(set(t_top) & set(s_top))
        out["recall"].append(inter / k)
        out["overlap"].append(inter / len(set(t_top) | set(s_top)))
        dcg = sum(max(t_sim[j], 0) / math.log2(r + 2) for r, j in enumerate(s_top) if j in t_top)
        idcg = sum(max(t_sim[j], 0) / math.log2(r + 2) for r, j in enumerate(t_top))
        out["ndcg"].append(dcg / idcg)
        bdcg = sum(1 / math.log2(r + 2) for r, j in enumerate(s_top) if j in t_top)
        out["ndcg_binary"].append(bdcg / sum(1 / math.log2(r + 2) for r in range(k)))
    return {m: float(np.mean(v)) for m, v in out.items()}


def test_recall_and_ndcg_equal_brute_force():
    rng = np.random.default_rng(0)
    teacher = unit(rng.standard_normal((60, 8))).astype(np.float32)
    student = unit(teacher[:, :4] + 0.3 * rng.standard_normal((60, 4))).astype(np.float32)
    queries = np.array([0, 3, 7, 11, 20, 42, 59])
    judge = NeighbourEval(torch.from_numpy(teacher), torch.from_numpy(queries), 10)
    got = judge.score(torch.from_numpy(student))
    want = brute_scores(teacher, student, queries)
    assert got["vs_teacher_recall10"] == pytest.approx(want["recall"], abs=1e-6)
    assert got["vs_teacher_ndcg10"] == pytest.approx(want["ndcg"], abs=1e-5)
    assert got["vs_teacher_ndcg10_binary"] == pytest.approx(want["ndcg_binary"], abs=1e-5)
    assert got["vs_teacher_overlap10"] == pytest.approx(want["overlap"], abs=1e-6)
    assert 0 < want["recall"] < 1  # the example is neither trivial nor hopeless
    # the teacher scored against itself is perfect
    assert judge.score(torch.from_numpy(teacher))["vs_teacher_ndcg10"] == pytest.approx(1.0)


def test_exact_topk_excludes_self_and_matches_brute_force():
    rng = np.random.default_rng(1)
    emb = unit(rng.standard_normal((30, 5))).astype(np.float32)
    idx, sim = exact_topk(emb, 4, backend="torch")
    for i in range(30):
        top, sims = brute_ranking(emb, i, 4)
        assert idx[i].tolist() == top and i not in idx[i]
        assert sim[i] == pytest.approx([sims[j] for j in top], abs=1e-6)


def test_knn_is_cached_per_teacher_and_k(tmp_path):
    emb = unit(np.random.default_rng(2).standard_normal((12, 3))).astype(np.float32)
    first = cached_topk(emb, 3, "h1")
    again = cached_topk(np.zeros_like(emb), 3, "h1")  # same key: read back, not recomputed
    assert np.array_equal(first[0], again[0])
    with pytest.raises(LmlabError, match="k=12 but the teacher has 12 items"):
        cached_topk(emb, 12, "h1")


def test_baselines_at_the_teachers_dim():
    rng = np.random.default_rng(3)
    teacher = unit(rng.standard_normal((40, 6))).astype(np.float32)
    embs = baseline_embeddings(teacher, np.arange(30), 6, ["pca", "random", "truncate"], seed=0)
    assert {k: v.shape for k, v in embs.items()} == {k: (40, 6) for k in embs}
    judge = NeighbourEval(torch.from_numpy(teacher), torch.arange(40), 10)
    assert judge.score(torch.from_numpy(embs["truncate"]))["vs_teacher_recall10"] == 1.0
    again = baseline_embeddings(teacher, np.arange(30), 6, ["random"], seed=0)["random"]
    assert np.array_equal(again, embs["random"])  # seeded


def test_faiss_and_torch_agree():
    pytest.importorskip("faiss")
    emb = unit(np.random.default_rng(4).standard_normal((50, 6))).astype(np.float32)
    fi, fs = exact_topk(emb, 5, backend="faiss")
    ti, ts = exact_topk(emb, 5, backend="torch")
    assert np.array_equal(fi, ti) and np.allclose(fs, ts, atol=1e-5)
