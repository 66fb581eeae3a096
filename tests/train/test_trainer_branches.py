"""The trainer's branches that users depend on and the happy-path tests do not reach: diverged
loss, periodic checkpoints, sparse logging, best-checkpoint in max mode, the fp16 scaler across a
resume, a finished run resumed, micro-steps under DDP, bits per byte, init_from with another
tokenizer, and the SFT batches the objective really receives.

Most tests drive `Trainer` directly on a tiny GPT and synthetic batches (seconds); the rest go
through `lmlab.train.run.train` on the toy corpus."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import lmlab.train.lm as lm
from lmlab.config import resolve
from lmlab.data.loader import TokenLoader
from lmlab.data.shards import split_view
from lmlab.errors import LmlabError
from lmlab.model.checkpoint import read_meta
from lmlab.model.gpt import GPT
from lmlab.runs.rundir import RunDir, read_metrics, read_status
from lmlab.text.tokenizer import load_tokenizer
from lmlab.train.config import TrainConfig
from lmlab.train.dist import Dist
from lmlab.train.lm import lm_objective, make_evaluator, token_bytes
from lmlab.train.run import train
from lmlab.train.trainer import Trainer
from tests.fixtures.ports import free_port
from tests.train.conftest import tiny_sets

V, T = 32, 8


class Tokens:
    """Random (x, y) batches that are a pure function of the step: resumable like the loader."""

    def __init__(self, batch=2, seed=0):
        self.batch, self.seed, self.step = batch, seed, 0

    def next_batch(self):
        gen = torch.Generator().manual_seed(self.seed * 10_000 + self.step)
        self.step += 1
        ids = torch.randint(0, V, (self.batch, T + 1), generator=gen)
        return ids[:, :-1], ids[:, 1:]

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = state["step"]


def small_cfg(**over) -> TrainConfig:
    model = {"depth": 1, "n_embd": 16, "n_head": 2, "vocab_size": V, "seq_len": T}
    base = {"steps": 4, "eval_every": 2, "micro_batch": 2, "progress": False, "device": "cpu"}
    base["peak_flops"] = 1e12  # no matmul benchmark for the MFU column
    return TrainConfig.model_validate({**base, "model": model, **over})


def fit(path, cfg, objective=lm_objective, evaluate=None, best=("val_loss", "min"), data=None):
    """Train `cfg` in run dir `path` with the one Trainer; returns (trainer, final metrics)."""
    torch.manual_seed(cfg.seed)
    run = RunDir.create(cfg, name="t", run_dir=path)
    trainer = Trainer(
        cfg, GPT(cfg.model), objective, data or Tokens(), run, Dist(), evaluate, {}, best
    )
    with run.running():
        final = trainer.fit()
    return trainer, final


def steps_logged(path):
    return [r["step"] for r in read_metrics(path)]


def test_non_finite_loss_stops_with_the_step(tmp_path):
    calls = {"n": 0}

    def diverges(model, batch):
        calls["n"] += 1
        loss, metrics = lm_objective(model, batch)
        return (loss * float("nan") if calls["n"] == 3 else loss), metrics

    with pytest.raises(LmlabError) as err:
        fit(tmp_path / "r", small_cfg(), diverges)
    assert str(err.value) == (
        "loss is nan at step 2: training diverged (lower optim.lr, or check the data)"
    )
    assert read_status(tmp_path / "r")["state"] == "failed"


def test_ckpt_every_keeps_weight_only_snapshots(tmp_path):
    fit(tmp_path / "r", small_cfg(steps=5, ckpt_every=2, eval_every=0))
    ckpts = tmp_path / "r" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_000002", "step_000004"]
    assert read_meta(ckpts / "step_000004")["step"] == 4
    assert not (ckpts / "step_000002" / "optim.json").exists()
    assert (ckpts / "latest" / "optim.json").exists()


def test_log_every_logs_every_nth_step_the_last_and_evaluations(tmp_path):
    def evaluate(model):
        return {"val_loss": 1.0}

    fit(tmp_path / "r", small_cfg(steps=8, log_every=3, eval_every=4), evaluate=evaluate)
    assert steps_logged(tmp_path / "r") == [3, 4, 6, 8]
    rows = read_metrics(tmp_path / "r")
    assert [r["step"] for r in rows if "val_loss" in r] == [4, 8]


@pytest.mark.parametrize(
    ("mode", "best_step"),
    [("max", 4), ("min", 2)],
)
def test_best_checkpoint_follows_the_metric_direction(tmp_path, mode, best_step):
    scores = iter([0.2, 0.9, 0.5])  # at steps 2, 4, 6

    def evaluate(model):
        return {"accuracy": next(scores)}

    trainer, _ = fit(tmp_path / "r", small_cfg(steps=6), evaluate=evaluate, best=("accuracy", mode))
    meta = read_meta(tmp_path / "r" / "checkpoints" / "best")
    assert meta["step"] == best_step
    assert trainer.best == {"max": 0.9, "min": 0.2}[mode]


def test_best_ignores_missing_and_non_finite_values(tmp_path):
    scores = iter([{"val_loss": float("nan")}, {}, {"val_loss": 3.0}])
    trainer, _ = fit(tmp_path / "r", small_cfg(steps=6), evaluate=lambda m: next(scores))
    assert trainer.best == 3.0
    assert read_meta(tmp_path / "r" / "checkpoints" / "best")["step"] == 6


def test_fp16_scaler_state_survives_a_resume(tmp_path):
    cfg = small_cfg(steps=6, eval_every=2, dtype="fp16")
    fit(tmp_path / "full", cfg)
    calls = {"n": 0}

    def dies_at_step_5(model, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return lm_objective(model, batch)

    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "cut", cfg, dies_at_step_5)
    fit(tmp_path / "cut", cfg)  # resumes from step 4

    def scaler(path):
        state = json.loads((path / "checkpoints/latest/optim.json").read_text())
        return state["trainer"]["scaler"]

    full, resumed = scaler(tmp_path / "full"), scaler(tmp_path / "cut")
    # the growth tracker counts steps since the scale last changed: 6 only if restored at 4
    assert full["_growth_tracker"] == 6
    assert resumed == full
    losses = [
        [r["loss"] for r in read_metrics(p) if "loss" in r]
        for p in (tmp_path / "full", tmp_path / "cut")
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_a_finished_run_resumed_does_nothing_and_keeps_its_record(toy_data, tmp_path):
    pre, _, tok = toy_data
    cfg = resolve(TrainConfig, sets=tiny_sets(pre, tok, steps=3, eval_every=0))
    run = train(cfg, run_dir=tmp_path / "r")
    before = read_metrics(run.path)
    status = read_status(run.path)
    weights = (run.path / "checkpoints/latest/model.safetensors").read_bytes()
    again = train(cfg, run_dir=tmp_path / "r")
    assert again.path == run.path and read_metrics(run.path) == before
    assert read_status(run.path)["state"] == "done"
    assert read_status(run.path)["best"] == status["best"]
    assert (run.path / "checkpoints/latest/model.safetensors").read_bytes() == weights
    assert read_meta(run.path / "checkpoints" / "latest")["step"] == 3


class FakeDDP(torch.nn.Module):
    """Stands in for DistributedDataParallel: records which micro-steps ran under no_sync."""

    def __init__(self, model, log):
        super().__init__()
        self.module, self.log, self.syncing = model, log, True

    def forward(self, *args, **kwargs):
        self.log.append(self.syncing)
        return self.module(*args, **kwargs)

    def no_sync(self):
        net = self

        class Ctx:
            def __enter__(self):
                net.syncing = False

            def __exit__(self, *exc):
                net.syncing = True

        return Ctx()


class OneRankDist(Dist):
    """A 'distributed' run of one rank: every collective is the identity."""

    @property
    def enabled(self) -> bool:
        return True

    def all_mean(self, value):
        return value

    def all_sum(self, t):
        return t

    def barrier(self):
        pass


def test_ddp_accumulation_syncs_gradients_only_on_the_last_micro_step(tmp_path):
    cfg = small_cfg(steps=2, eval_every=0, total_batch_tokens=3 * 2 * T)  # accum = 3
    torch.manual_seed(0)
    run = RunDir.create(cfg, name="t", run_dir=tmp_path / "r")
    trainer = Trainer(cfg, GPT(cfg.model), lm_objective, Tokens(), run, Dist())
    assert trainer.accum == 3
    log: list[bool] = []
    trainer.dist, trainer.net = OneRankDist(), FakeDDP(trainer.model, log)
    trainer.train_step()
    assert log == [False, False, True]


def test_ddp_with_accumulation_matches_one_process(toy_data, tmp_path):
    pre, _, tok = toy_data
    common = tiny_sets(pre, tok, steps=3, eval_every=0, device="cpu", total_batch_tokens=8 * 32)
    args = [a for s in common for a in ("--set", s)]

    def launch(*prefix, micro):
        out = tmp_path / f"m{micro}"
        proc = subprocess.run(
            [
                *prefix,
                "-m",
                "lmlab",
                "train",
                *args,
                "--set",
                f"micro_batch={micro}",
                "--run-dir",
                out,
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return [r["loss"] for r in read_metrics(out) if "loss" in r]

    single = launch(sys.executable, micro=8)  # one micro-step of 8 rows
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    ddp = launch(*torchrun, "--master_port", str(free_port()), micro=2)  # 2 ranks x 2 micro-steps
    assert len(ddp) == 3 and ddp == pytest.approx(single, rel=1e-4)


def test_val_bpb_is_nats_over_bytes_times_ln2(toy_data):
    pre, _, tok_dir = toy_data
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    model = GPT(
        small_cfg(
            model={
                "depth": 1,
                "n_embd": 16,
                "n_head": 2,
                "vocab_size": tok.vocab_size,
                "seq_len": 16,
            }
        ).model
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    nbytes = token_bytes(tok, tok.vocab_size)
    assert nbytes[tok.bos_id] == 0 and nbytes[tok.eot_id] == 0
    plain = next(i for i in range(tok.vocab_size) if not tok.is_special(i))
    assert nbytes[plain] == len(tok.decode([plain]).encode("utf-8")) > 0
    val = TokenLoader({str(pre): 1}, "val", 16, 4)
    got = make_evaluator(val, Dist(), nbytes, batches=2)(model)
    nats = count = byte_count = 0.0
    with torch.no_grad():
        for x, y in list(val.iter_val(2)):
            losses = model(x, y, loss_reduction="none").double()
            nats += losses[y != -1].sum().item()
            count += (y != -1).sum().item()
            byte_count += nbytes[y[y != -1]].sum().item()
    assert got["val_loss"] == pytest.approx(nats / count, rel=1e-6)
    assert got["val_bpb"] == pytest.approx(nats / (byte_count * math.log(2)), rel=1e-6)


def test_init_from_with_another_tokenizer_is_refused(toy_data, tmp_path):
    pre, _, tok_dir = toy_data
    ckpt = tmp_path / "elsewhere"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"")
    (ckpt / "meta.json").write_text(json.dumps({"tokenizer": {"hash": "f" * 16}, "model": {}}))
    cfg = resolve(TrainConfig, sets=[*tiny_sets(pre, tok_dir), f"init_from={ckpt}"])
    with pytest.raises(LmlabError) as err:
        train(cfg, run_dir=tmp_path / "r")
    assert str(err.value) == (
        f"init_from {ckpt} was trained with tokenizer {'f' * 16} but the data uses "
        f"{load_tokenizer(tok_dir).hash}"
    )


def test_sft_batches_mask_exactly_the_untrained_targets(toy_data, tmp_path, monkeypatch):
    _, sft_dir, tok = toy_data
    seen = []
    real = lm.lm_objective

    def spy(model, batch):
        seen.append([t.detach().cpu().clone() for t in batch])
        return real(model, batch)

    monkeypatch.setattr(lm, "lm_objective", spy)
    cfg = resolve(TrainConfig, sets=[*tiny_sets(sft_dir, tok, steps=2, eval_every=0), "phase=sft"])
    train(cfg, run_dir=tmp_path / "sft")
    assert len(seen) == 2
    # every row is one document from its bos; index the train split's documents by that row
    rows = {}
    for seg in split_view(sft_dir, "train").segments:
        ends = np.append(seg.doc_starts[1:], len(seg.tokens))
        for a, b in zip(seg.doc_starts.tolist(), ends.tolist(), strict=True):
            doc, mask = np.asarray(seg.tokens[a:b]), np.asarray(seg.mask[a:b])
            doc, mask = doc[:33], mask[:33]  # seq_len + 1
            rows.setdefault(tuple(doc[:-1].tolist()), []).append((doc, mask))
    masked = trained = 0
    for x, y in seen:
        for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
            n = max(i for i, t in enumerate(row_x) if i == 0 or t != row_x[0]) + 1
            expected = []
            for doc, mask in rows[tuple(row_x[:n])]:
                targets = [int(t) if m else -1 for t, m in zip(doc[1:], mask[1:], strict=True)]
                expected.append(targets + [-1] * (len(row_y) - len(targets)))
            assert row_y in expected
            masked += sum(t == -1 for t in row_y[:n])
            trained += sum(t != -1 for t in row_y)
    assert masked > 0 and trained > 0  # prompts are masked, answers are not
