import subprocess
import sys

import pytest
import typer
import yaml

from lmlab import __version__
from lmlab.cli import app
from lmlab.config import PROFILE_DIR, list_profiles, resolve
from lmlab.train.config import TrainConfig


def all_commands():
    root = typer.main.get_command(app)

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, cmd

    return list(walk(root, []))


def test_root_help_and_version(lmlab_cli):
    out = lmlab_cli("--help", check=0).stdout
    for group in ("train", "chat", "generate", "tokenizer", "data", "runs", "sweep"):
        assert group in out
    assert lmlab_cli("--version", check=0).stdout.strip() == f"lmlab {__version__}"


def test_every_verb_has_help_with_an_example():
    commands = all_commands()
    assert len(commands) >= 9
    for path, cmd in commands:
        assert "Example:" in (cmd.help or ""), f"lmlab {' '.join(path)} has no example in --help"


@pytest.mark.parametrize("name", [p[0] for p in list_profiles([PROFILE_DIR])])
def test_every_shipped_profile_validates(name):
    cfg = resolve(TrainConfig, profile=name, profile_dirs=[PROFILE_DIR])
    assert cfg.steps >= 1


def test_unknown_key_is_one_line_with_path(lmlab_cli):
    proc = lmlab_cli("train", "--profile", "smoke", "--set", "optim.lrr=0.1", "--print-config")
    assert proc.returncode == 1
    assert (
        proc.stderr.count("\n") == 1
        and "optim.lrr" in proc.stderr
        and "did you mean lr" in proc.stderr
    )


def test_malformed_yaml_names_file_and_line(lmlab_cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 3\nmodel:\n  depth: [1,\n")
    proc = lmlab_cli("train", "-c", bad, "--print-config")
    assert proc.returncode == 1 and f"{bad}:" in proc.stderr and "invalid YAML" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_nonexistent_profile(lmlab_cli):
    proc = lmlab_cli("train", "--profile", "smokee")
    assert proc.returncode == 1 and "unknown profile 'smokee'" in proc.stderr
    assert "did you mean smoke" in proc.stderr


def test_debug_shows_traceback(lmlab_cli, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "LMLAB_DEBUG": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lmlab", "train", "--profile", "nope"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_print_config_and_list_profiles(lmlab_cli):
    out = lmlab_cli("train", "--profile", "smoke", "--set", "steps=7", "--print-config", check=0)
    assert yaml.safe_load(out.stdout)["steps"] == 7
    listing = lmlab_cli("train", "--list-profiles", check=0).stdout
    assert "smoke" in listing and "Seconds on a CPU" in listing


def test_smoke_train_then_chat_answers(lmlab_cli, tmp_path):
    run = tmp_path / "sft"
    lmlab_cli(
        "train",
        "--profile",
        "smoke-sft",
        "--set",
        "progress=false",
        "--run-dir",
        run,
        check=0,
        timeout=300,
    )
    out = lmlab_cli(
        "chat", "--ckpt", run, "--prompt", "What colour is the cat?", "--temperature", "0", check=0
    )
    reply = out.stdout.strip()
    assert reply and "<|" not in reply  # a real answer that ended at eot, no role tokens
    bad = lmlab_cli(
        "generate",
        "--ckpt",
        run,
        "--prompt",
        "The",
        "--kv-policy",
        "magic",
        "--max-new-tokens",
        "8",
    )
    assert bad.returncode == 1 and "unknown KV policy 'magic'" in bad.stderr
    long = lmlab_cli("chat", "--ckpt", run, "--prompt", "word " * 300)
    assert long.returncode == 1 and "too many" in long.stderr
    # interactive: a message longer than the context is an error line, and the session goes on
    session = subprocess.run(
        [sys.executable, "-m", "lmlab", "chat", "--ckpt", str(run), "--temperature", "0"],
        input="word " * 300 + "\nWhat colour is the cat?\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert session.returncode == 0 and "too many" in session.stderr
    assert session.stdout.strip() == reply  # the second message was still answered
    both = lmlab_cli(
        "chat", "--ckpt", run, "--system", "x", "--system-file", __file__, "--prompt", "hi"
    )
    assert both.returncode == 1 and "--system and --system-file" in both.stderr


def test_sweep_over_real_train_seeds(lmlab_cli, tmp_path):
    sweep = {
        "name": "seeds",
        "command": "lmlab train --profile smoke",
        "seeds": [0, 1],  # a repeated seed is refused (one run dir, two writers)
        "metrics": ["val_loss"],
        "experiments": [
            {
                "name": "tiny",
                "set": {
                    "steps": 3,
                    "eval_every": 3,
                    "progress": False,
                    "model.depth": 1,
                    "model.n_embd": 32,
                },
            }
        ],
        "out": str(tmp_path / "sw"),
    }
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(sweep))
    lmlab_cli("sweep", "run", f, check=0, timeout=300)
    rows = [
        r
        for r in (tmp_path / "sw" / "summary.csv").read_text().splitlines()[1:]
        if r.startswith("run,")
    ]
    import csv
    import io

    parsed = list(csv.DictReader(io.StringIO((tmp_path / "sw" / "summary.csv").read_text())))
    runs = [r for r in parsed if r["row"] == "run"]
    assert len(rows) == 2 and {r["seed"] for r in runs} == {"0", "1"}
    by_seed = {r["seed"]: r["val_loss_final"] for r in runs}
    assert by_seed["0"] != by_seed["1"]


def test_chat_shrinks_reply_cap_to_fit_a_long_system_prompt(tmp_path):
    import torch

    from lmlab.model import GPT, Engine, GenerationConfig, ModelConfig
    from lmlab.model.cli import answer
    from lmlab.text.chat import MIN_REPLY
    from lmlab.text.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer([f"w{i}" for i in range(40)])
    torch.manual_seed(0)
    model = GPT(ModelConfig(depth=1, n_embd=32, n_head=2, vocab_size=tok.vocab_size, seq_len=48))
    engine = Engine(model, tok)
    system = " ".join(f"w{i}" for i in range(20))  # 28 prompt tokens: 40 new do not fit
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": "w1 w2"}]
    cfg = GenerationConfig(max_new_tokens=40, stop_tokens=[tok.eot_id])
    calls = []
    real = engine.generate
    engine.generate = lambda ids, c: calls.append((len(ids[0]), c.max_new_tokens)) or real(ids, c)
    answer(engine, tok, msgs, cfg)
    ((prompt_len, cap),) = calls
    assert prompt_len + cap == 48 and MIN_REPLY <= cap < 40


def test_usage_errors_exit_2_with_clicks_message(lmlab_cli):
    proc = lmlab_cli("tokenizer", "train", "--input-glob", "*.md", "--out", "t")
    assert proc.returncode == 2 and "Missing option '--vocab-size'" in proc.stderr
    proc = lmlab_cli("train", "--bogus")
    assert proc.returncode == 2 and "No such option: --bogus" in proc.stderr
    assert "Traceback" not in proc.stderr and "LMLAB_DEBUG" not in proc.stderr
