"""The whole notes workflow on the shipped sample, offline, with the default paths under
LMLAB_HOME: tokenizer -> caches -> smoke-pretrain -> smoke-sft -> pipeline rerun -> chat."""

import json

import pytest
import torch
import yaml
from notes_testkit import go_offline
from typer.testing import CliRunner

from lmlab.errors import LmlabError
from lmlab.paths import runs_root
from lmlab.runs.rundir import read_metrics, read_status
from lmlab.studies.notes.cache_cli import cache_app
from lmlab.studies.notes.cli import notes_app
from lmlab.studies.notes.paths import default_cache_dir, default_tokenizer_dir, persona
from lmlab.text.tokenizer import load_tokenizer

runner = CliRunner()


@pytest.fixture(autouse=True)
def _offline_single_thread(monkeypatch, tmp_path):
    go_offline(monkeypatch, tmp_path)
    # a ~0.2M-parameter model: threads cost more than they give, most of all on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def invoke(app, *args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def val_losses(run_dir):
    return [m["val_loss"] for m in read_metrics(run_dir) if "val_loss" in m and m["step"] > 0]


def the_run(kind):
    (path,) = runs_root().glob(f"notes-smoke-{kind}-*")
    return path


def test_sample_notes_to_chat_offline(tmp_path):
    out = invoke(notes_app, "tokenizer").output
    tok = load_tokenizer(default_tokenizer_dir())
    assert tok.special_ids == {"bos": 1, "system": 3, "user": 4, "assistant": 5, "eot": 6}
    assert "saved sentencepiece tokenizer" in out and tok.vocab_size == 1024
    assert "kept the existing" in invoke(notes_app, "tokenizer").output

    invoke(cache_app, "build-all", "--only", "roam,primer", "--no-progress")
    assert (default_cache_dir() / "sft/primer/val/meta.json").is_file()

    # pretrain: the loss on the roam val split falls from the untrained model's
    out = invoke(
        notes_app, "train", "--profile", "smoke-pretrain", "--set", "progress=false"
    ).output
    pre = the_run("pretrain")
    settings = json.loads((pre / "resolved_settings.json").read_text())
    assert settings["phase"] == "pretrain" and settings["val_source"] == "roam"
    assert settings["caches"]["roam"]["weight"] == pytest.approx(0.7)
    # validation reads the roam cache only (data.val_sources), training the whole mix
    val_sources = yaml.safe_load((pre / "config.yaml").read_text())["data"]["val_sources"]
    assert val_sources == {settings["caches"]["roam"]["path"]: 1.0}
    assert settings["notes_config"]["name"] == "notes-smoke"
    before, curve = settings["val_before"]["val_loss"], val_losses(pre)
    assert before == pytest.approx(6.93, abs=0.1)  # ln(1024): the untrained model
    assert curve[-1] < curve[0] < before - 1.0
    assert read_status(pre)["state"] == "done" and "pretrain: val_loss" in out

    # sft from the best pretrain checkpoint, loss on assistant tokens only
    out = invoke(notes_app, "train", "--profile", "smoke-sft", "--set", "progress=false").output
    sft = the_run("sft")
    settings = json.loads((sft / "resolved_settings.json").read_text())
    assert settings["init_from"] == str(pre / "checkpoints" / "best")
    assert yaml.safe_load((sft / "config.yaml").read_text())["init_from"] == settings["init_from"]
    assert settings["train_config"]["phase"] == "sft" and settings["val_source"] == "mix"
    before, curve = settings["val_before"]["val_loss"], val_losses(sft)
    assert min(curve) < before and curve[-1] < before
    assert "longer than seq_len + 1 = 129 tokens" in out  # said so, not cut silently

    # pipeline: the finished pretrain run is not trained again, neither is the finished SFT
    # (the device and progress bars are not part of a run's identity)
    stamp = (pre / "checkpoints/best/model.safetensors").stat().st_mtime_ns
    args = ["--profile", "smoke-sft", "--phase", "pipeline", "--device", "cpu"]
    out = invoke(notes_app, "train", *args).output
    assert "pretrain: val_loss" in out and "sft: val_loss" in out
    assert (pre / "checkpoints/best/model.safetensors").stat().st_mtime_ns == stamp
    assert len(list(runs_root().iterdir())) == 2

    # chat (the core engine, as `lmlab chat` runs it): sampled replies end at <|eot|> (the
    # smoke model is tiny, so most of them, not all), and no role token is ever generated
    from lmlab.model.checkpoint import load_checkpoint
    from lmlab.model.engine import Engine, GenerationConfig
    from lmlab.text.chat import render_for_completion, role_token_ids

    model, tok, _ = load_checkpoint(sft)
    questions = ["Hi!", "What is Gus?", "How do I fix a flat tyre?", "Recommend me a book."]
    prompts = [
        render_for_completion(
            tok, [{"role": "system", "content": persona()}, {"role": "user", "content": q}]
        )
        for q in questions * 2
    ]
    cfg = GenerationConfig(
        max_new_tokens=model.cfg.seq_len - max(map(len, prompts)),
        temperature=0.9,
        top_k=50,
        seed=42,
        stop_tokens=[tok.eot_id],
        banned_tokens=role_token_ids(tok),
    )
    gens = Engine(model, tok).generate(prompts, cfg)
    stopped = [g for g in gens if g.finish_reason == "stop"]
    assert len(stopped) >= len(gens) // 2 and all(g.stop_token == tok.eot_id for g in stopped)
    assert not set(role_token_ids(tok)) & {t for g in gens for t in g.tokens}
    args = ["--ckpt", sft, "--prompt", "What is Gus?", "--max-new-tokens", "24"]
    assert invoke(notes_app, "chat", *args).output.strip()


def test_sft_needs_a_finished_pretrain_run_or_init_from(tmp_path):
    invoke(notes_app, "tokenizer")
    invoke(cache_app, "build-all", "--only", "roam,primer", "--no-progress")
    result = runner.invoke(notes_app, ["train", "--profile", "smoke-sft"])
    assert result.exit_code == 1 and isinstance(result.exception, LmlabError)
    assert "which is not started" in str(result.exception)
    assert "--init-from" in str(result.exception)
    result = runner.invoke(notes_app, ["train", "--profile", "smoke-pretrain", "--init-from", "x"])
    assert "pretraining starts from scratch" in str(result.exception)
