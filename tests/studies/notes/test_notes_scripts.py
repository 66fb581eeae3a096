"""scripts/run_full_pipeline.sh and scripts/run_overnight.sh: thin wrappers over lmlab commands."""

import os
import subprocess
import sys
from pathlib import Path

from lmlab.runs.rundir import read_status
from lmlab.studies.notes.paths import default_tokenizer_dir
from lmlab.studies.notes.tokenizer import TokenizerInputs, train_notes_tokenizer

SCRIPTS = Path(__file__).resolve().parents[3] / "scripts"


def run(script, *args, **env):
    full = {**os.environ, **env}
    return subprocess.run(
        ["bash", str(SCRIPTS / script), *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=300,
    )


def commands(proc):
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line.startswith("lmlab ")]


def test_full_pipeline_builds_what_is_missing_then_runs_the_pipeline():
    proc = run("run_full_pipeline.sh", LMLAB="echo lmlab")
    assert commands(proc) == [
        "lmlab notes tokenizer",
        "lmlab cache build-all",
        "lmlab notes train --phase pipeline --profile pipeline-dev",
    ]
    proc = run(
        "run_full_pipeline.sh",
        "dev",
        "--set",
        "seed=1",
        LMLAB="echo lmlab",
        SKIP_TOKENIZER="true",
        ROAM_DIR="/notes",
        PRIMER="/p.txt",
        FORCE="true",
        DEVICE="cpu",
    )
    assert commands(proc) == [
        "lmlab cache build-all --roam-dir /notes --primer /p.txt --force",
        "lmlab notes train --phase pipeline --profile dev --device cpu --set seed=1",
    ]


def test_overnight_runs_pipeline_prod_on_existing_caches():
    proc = run("run_overnight.sh", LMLAB="echo lmlab", DEVICE="cuda")
    assert commands(proc) == [
        "lmlab notes train --phase pipeline --profile pipeline-prod --device cuda"
    ]
    proc = run("run_overnight.sh", LMLAB="echo lmlab", SKIP_TOKENIZER="false", SKIP_CACHE="false")
    assert commands(proc)[:2] == ["lmlab notes tokenizer", "lmlab cache build-all"]


def test_the_script_really_runs_offline_on_the_sample(tmp_path):
    # the tokenizer is trained here (in-process, cheap); the script builds caches and trains
    train_notes_tokenizer(TokenizerInputs(), default_tokenizer_dir(), progress=False)
    proc = run(
        "run_full_pipeline.sh",
        "smoke-pretrain",
        *("--set", "progress=false", "--set", "model.seq_len=64"),
        *("--set", "training.pretrain.total_steps=4", "--set", "training.pretrain.warmup_steps=1"),
        *("--set", "training.sft.total_steps=2", "--set", "training.sft.warmup_steps=1"),
        LMLAB=f"{sys.executable} -m lmlab",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",  # a tiny model on a possibly busy machine
        SKIP_TOKENIZER="true",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = sorted(Path(os.environ["LMLAB_RUNS_DIR"]).iterdir())
    assert [r.name.rsplit("-", 1)[0] for r in runs] == ["notes-smoke-pretrain", "notes-smoke-sft"]
    assert all(read_status(r)["state"] == "done" for r in runs)
    assert "unavailable: fineweb_edu" in proc.stderr  # offline: said, and the rest went on
