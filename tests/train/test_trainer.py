import json
import math
import subprocess
import sys

import pytest
import torch

import lmlab.train.lm as lm
from lmlab.config import resolve
from lmlab.errors import LmlabError
from lmlab.model.checkpoint import load_model, read_meta
from lmlab.runs.rundir import read_metrics, read_status
from lmlab.train.config import TrainConfig
from lmlab.train.run import train
from tests.fixtures.ports import free_port
from tests.train.conftest import tiny_sets


def cfg_for(toy_data, sft=False, **over):
    pre, sft_dir, tok = toy_data
    sets = tiny_sets(sft_dir if sft else pre, tok, **over)
    if sft:
        sets.append("phase=sft")
    return resolve(TrainConfig, sets=sets)


def losses(run_path):
    return [r["loss"] for r in read_metrics(run_path) if "loss" in r]


def test_pretrain_loss_falls_and_run_dir_is_complete(toy_data, tmp_path):
    run = train(cfg_for(toy_data, steps=20), run_dir=tmp_path / "r")
    rows = read_metrics(run.path)
    assert [r["step"] for r in rows] == list(range(1, 21))
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert first == pytest.approx(math.log(read_meta(run.path)["model"]["vocab_size"]), abs=0.1)
    assert last < first - 1.0
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(vals) == 5 and vals[-1] < vals[0] and all(r.get("mfu", 0) > 0 for r in rows)
    status = read_status(run.path)
    assert status["state"] == "done" and status["best"]["val_loss"] == min(vals)
    for tag in ("latest", "best"):
        assert (run.path / "checkpoints" / tag / "model.safetensors").exists()
    assert (run.path / "tokenizer" / "tokenizer.json").exists()
    assert (run.path / "metrics.parquet").exists() and (run.path / "config.yaml").exists()


def test_checkpoint_round_trip_gives_same_logits(toy_data, tmp_path):
    run = train(cfg_for(toy_data, steps=4, eval_every=0), run_dir=tmp_path / "r")
    model, meta = load_model(run.path / "checkpoints" / "latest")
    again, _ = load_model(run.path)
    ids = torch.randint(0, meta["model"]["vocab_size"], (2, 16))
    assert meta["step"] == 4 and torch.equal(model(ids), again(ids))
    assert abs(model(ids)).sum() > 0  # trained weights, not the zero-init projections


def test_exact_resume_matches_uninterrupted(toy_data, tmp_path, monkeypatch):
    cfg = cfg_for(toy_data, steps=12, eval_every=4, seed=3)
    full = train(cfg, run_dir=tmp_path / "full")

    calls = {"n": 0}
    real = lm.lm_objective

    def dies_at_step_7(model, batch):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # what a kill looks like from inside the loop
        return real(model, batch)

    monkeypatch.setattr(lm, "lm_objective", dies_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir=tmp_path / "cut")
    assert read_status(tmp_path / "cut")["state"] == "interrupted"
    assert read_meta(tmp_path / "cut" / "checkpoints" / "latest")["step"] == 4
    monkeypatch.setattr(lm, "lm_objective", real)
    resumed = train(cfg, run_dir=tmp_path / "cut")
    a, b = losses(full.path), losses(resumed.path)
    assert len(a) == len(b) == 12
    assert a == pytest.approx(b, rel=1e-6, abs=1e-7)


def test_no_resume_starts_fresh(toy_data, tmp_path):
    cfg = cfg_for(toy_data, steps=4, eval_every=2)
    train(cfg, run_dir=tmp_path / "r")
    train(cfg, run_dir=tmp_path / "r", resume=False)
    assert len(losses(tmp_path / "r")) == 4


def test_grad_accumulation_matches_big_batch(toy_data, tmp_path):
    big = train(cfg_for(toy_data, steps=4, micro_batch=8), run_dir=tmp_path / "big")
    acc = train(
        cfg_for(toy_data, steps=4, micro_batch=4, total_batch_tokens=8 * 32),
        run_dir=tmp_path / "acc",
    )
    assert losses(big.path) == pytest.approx(losses(acc.path), rel=1e-4)


def test_sft_masks_prompt_tokens(toy_data, tmp_path):
    run = train(cfg_for(toy_data, sft=True, steps=16), run_dir=tmp_path / "sft")
    ls = losses(run.path)
    assert ls[-1] < ls[0]
    cfg_yaml = (run.path / "config.yaml").read_text()
    assert "phase: sft" in cfg_yaml


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_trains(toy_data, tmp_path, dtype):
    run = train(cfg_for(toy_data, steps=6, dtype=dtype, eval_every=0), run_dir=tmp_path / dtype)
    ls = losses(run.path)
    assert all(math.isfinite(x) for x in ls) and ls[-1] < ls[0]
    if dtype == "fp16":  # the GradScaler's state is saved for exact resume
        state = json.loads((run.path / "checkpoints/latest/optim.json").read_text())
        assert state["trainer"]["scaler"]["scale"] > 0


def test_muon_and_wsd(toy_data, tmp_path):
    run = train(
        cfg_for(toy_data, steps=8, eval_every=0, **{"optim.name": "muon", "schedule.kind": "wsd"}),
        run_dir=tmp_path / "m",
    )
    ls = losses(run.path)
    lrs = [r["lr"] for r in read_metrics(run.path) if "lr" in r]
    assert ls[-1] < ls[0] and lrs[0] == lrs[5] > lrs[-1]  # stable, then decay


def test_tokenizer_mismatch_names_both_hashes(toy_data, tmp_path):
    from lmlab.text.tokenizer import train_tokenizer

    corpus = tmp_path / "other.txt"
    corpus.write_text("completely different words " * 200)
    other = train_tokenizer([corpus], vocab_size=300, out=tmp_path / "tok2", progress=False)
    pre, _, tok = toy_data
    cfg = cfg_for(toy_data, **{"data.tokenizer": str(tmp_path / "tok2")})
    with pytest.raises(LmlabError) as e:
        train(cfg, run_dir=tmp_path / "r")
    from lmlab.text.tokenizer import load_tokenizer

    assert other.hash in str(e.value) and load_tokenizer(tok).hash in str(e.value)


def test_missing_tokenizer_and_data_are_clear(toy_data, tmp_path):
    with pytest.raises(LmlabError, match="tokenizer not found: /nope"):
        train(cfg_for(toy_data, **{"data.tokenizer": "/nope"}), run_dir=tmp_path / "r")
    with pytest.raises(LmlabError, match="no such directory: /missing"):
        train(cfg_for(toy_data, **{"data.sources": '{"/missing": 1}'}), run_dir=tmp_path / "r")


def test_ddp_two_processes_match_single(toy_data, tmp_path):
    pre, _, tok = toy_data
    common = tiny_sets(pre, tok, steps=4, eval_every=2, device="cpu")
    args = [a for s in common for a in ("--set", s)]
    single = tmp_path / "single"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lmlab",
            "train",
            *args,
            "--set",
            "micro_batch=8",
            "--run-dir",
            single,
        ],
        check=True,
        capture_output=True,
    )
    ddp = tmp_path / "ddp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "lmlab",
            "train",
            *args,
            "--set",
            "micro_batch=4",
            "--run-dir",
            ddp,
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert losses(ddp) == pytest.approx(losses(single), rel=1e-4)
    vs = [r["val_loss"] for r in read_metrics(ddp) if "val_loss" in r]
    vs1 = [r["val_loss"] for r in read_metrics(single) if "val_loss" in r]
    assert vs == pytest.approx(vs1, rel=1e-4)


def test_val_sources_and_eval_at_start(toy_data, tmp_path):
    pre, sft_dir, _ = toy_data
    base = train(
        cfg_for(toy_data, steps=2, eval_every=0, eval_at_start=True), run_dir=tmp_path / "a"
    )
    other = train(
        cfg_for(
            toy_data,
            steps=2,
            eval_every=0,
            eval_at_start=True,
            **{"data.val_sources": "{" + f'"{sft_dir}": 1' + "}"},
        ),
        run_dir=tmp_path / "b",
    )
    rows_a, rows_b = read_metrics(base.path), read_metrics(other.path)
    assert rows_a[0]["step"] == 0 and "val_loss" in rows_a[0] and "loss" not in rows_a[0]
    assert losses(base.path) == losses(other.path)  # same training data
    assert rows_a[0]["val_loss"] != rows_b[0]["val_loss"]  # validated on other shards


def test_device_and_progress_do_not_change_the_run_id(toy_data, tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_RUNS_DIR", str(tmp_path))
    a = train(cfg_for(toy_data, steps=2, eval_every=0))
    b = train(cfg_for(toy_data, steps=2, eval_every=0, device="cpu", progress="true"))
    c = train(cfg_for(toy_data, steps=3, eval_every=0))
    assert a.path == b.path != c.path
