"""The distill recipe on the one trainer: it learns, writes the seed's files, resumes exactly."""

import json

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file

import lmlab.studies.distill  # noqa: F401  (registers the recipe and the student)
from lmlab.model.checkpoint import load_model
from lmlab.studies.distill.recipe import AnchorBatches
from lmlab.studies.distill.student import ProjectionStudent
from lmlab.train.config import TrainConfig
from lmlab.train.run import train


def clustered_teacher(path, n=240, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, d))
    emb = centres[rng.integers(0, 8, n)] + 0.6 * rng.standard_normal((n, d))
    np.save(path, emb.astype(np.float32))
    return path


def tiny_config(npy, **over):
    data = {
        "recipe": "distill",
        "name": "tiny",
        "steps": 40,
        "micro_batch": 32,
        "eval_every": 10,
        "ckpt_every": 20,
        "log_every": 5,
        "eval_at_start": True,
        "progress": False,
        "device": "cpu",
        "optim": {"lr": 0.003, "lr_ref_width": None},
        "schedule": {"warmup_steps": 4},
        "recipe_args": {
            "teacher_npy": str(npy),
            "k": 8,
            "neg_m": 32,
            "queue_size": 128,
            "dim": 4,
            "hidden": 32,
        },
    }
    for key, value in over.items():
        data[key] = value
    return TrainConfig.model_validate(data)


def test_student_learns_and_writes_the_seeds_files(tmp_path):
    cfg = tiny_config(clustered_teacher(tmp_path / "t.npy"))
    run = train(cfg, run_dir=tmp_path / "run")
    rows = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    recall = [r["vs_teacher_recall10"] for r in rows if "vs_teacher_recall10" in r]
    assert recall[-1] > recall[0] + 0.05  # from the untrained student (step 0) to the last eval
    status = json.loads((run.path / "status.json").read_text())
    assert status["state"] == "done" and status["best"]["vs_teacher_recall10"] == max(recall)
    logs = run.path / "logs"
    assert pl.read_parquet(logs / "train_logs.parquet").height == len(rows)
    summary = json.loads((logs / "train_summary.json").read_text())
    assert summary["best"]["vs_teacher_recall10"] == max(recall)
    assert {"baseline_pca_vs_teacher_recall10", "baseline_random_vs_teacher_recall10"} <= set(
        summary["baselines"]
    )
    ckpts = run.path / "checkpoints"
    assert {p.name for p in ckpts.glob("student_*")} == {
        "student_best.safetensors",
        "student_step_20.safetensors",
        "student_step_40.safetensors",
    }
    weights = load_file(ckpts / "student_best.safetensors")
    assert weights and not any(k.startswith("queue.") for k in weights)
    model, meta = load_model(ckpts / "best")
    assert isinstance(model, ProjectionStudent) and meta["arch"]["config"]["dim"] == 4
    assert "| pca |" in (run.path / "report.md").read_text()


def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    npy = clustered_teacher(tmp_path / "t.npy")
    straight = train(tiny_config(npy), run_dir=tmp_path / "a")

    calls = {"n": 0}
    real = AnchorBatches.next_batch

    def dies_at_step_15(self):
        calls["n"] += 1
        if calls["n"] == 15:  # after the checkpoint at step 10
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(AnchorBatches, "next_batch", dies_at_step_15)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(npy), run_dir=tmp_path / "b")
    monkeypatch.setattr(AnchorBatches, "next_batch", real)
    resumed = train(tiny_config(npy), run_dir=tmp_path / "b")
    a = load_file(straight.path / "checkpoints" / "latest" / "model.safetensors")
    b = load_file(resumed.path / "checkpoints" / "latest" / "model.safetensors")
    assert a.keys() == b.keys() and "queue.emb" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k  # weights and the queue of past embeddings


def test_anchor_batches_state_round_trip():
    src = AnchorBatches(np.arange(10), batch_size=4, neg_m=3, queue_size=8, seed=1)
    for _ in range(3):
        src.next_batch()
    state = src.state_dict()
    want = [src.next_batch() for _ in range(4)]
    again = AnchorBatches(np.arange(10), batch_size=4, neg_m=3, queue_size=8, seed=1)
    again.load_state_dict(state)
    got = [again.next_batch() for _ in range(4)]
    for w, g in zip(want, got, strict=True):
        assert torch.equal(w["anchors"], g["anchors"]) and torch.equal(
            w["neg_slots"], g["neg_slots"]
        )
    epoch = AnchorBatches(np.arange(10), batch_size=5, neg_m=0, queue_size=0, seed=2)
    seen = torch.cat([epoch.next_batch()["anchors"] for _ in range(2)])
    assert sorted(seen.tolist()) == list(range(10))  # an epoch visits every anchor once
