"""End to end on tiny sizes: generate -> train (a few steps) -> eval -> comparison report; reruns
skip finished runs; bad eval inputs fail with one clear line."""

import json
import shutil

import polars as pl
import pytest
import yaml

from lmlab.config import resolve
from lmlab.errors import LmlabError
from lmlab.studies.retrieval.evaluate import EvalConfig, evaluate
from lmlab.studies.retrieval.generate import generate
from lmlab.studies.retrieval.pipeline import PipelineOptions, run_pipeline
from lmlab.studies.retrieval.spec import load_spec

SPEC = {
    "name": "tiny",
    "train_samples": 60,
    "eval_samples": 40,
    "words": {"count": 48},
    "tokenizer": {"kind": "word"},
    "eval": {"name": "eval", "min_pairs": 2, "max_pairs": 20},
    "scenarios": [
        {"name": "baseline_mixed", "min_pairs": 2, "max_pairs": 20, "queries_per_sample": 2},
        {"name": "short_only", "min_pairs": 2, "max_pairs": 6},
    ],
}
RECIPE = {
    "device": "cpu",
    "steps": 4,
    "micro_batch": 4,
    "eval_every": 2,
    "eval_batches": 1,
    "peak_flops": 1.0e11,
    "data": {"use_mask": True, "doc_rows": True},
    "model": {"depth": 1, "n_embd": 32, "n_head": 1, "seq_len": 80},
}


def _pipeline_args(tmp, *extra):
    return [
        "retrieval", "pipeline", "--out", tmp / "exp", "--scenarios", tmp / "spec.yaml",
        "--recipe", tmp / "recipe.yaml", "--train-samples", "60", "--eval-samples", "40",
        "--quiet", *extra,
    ]  # fmt: skip


def _in_process(tmp, dry_run: bool) -> str:
    """The pipeline in this process (no child runs when everything is done): its output."""
    lines: list[str] = []
    opts = PipelineOptions(
        out=tmp / "exp",
        spec=load_spec(tmp / "spec.yaml", ["train_samples=60", "eval_samples=40"]),
        recipe=str(tmp / "recipe.yaml"),
        train_iters=3,
        dry_run=dry_run,
        progress=False,
    )
    run_pipeline(opts, echo=lines.append)
    return "\n".join(lines)


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    from tests.conftest import run_lmlab

    tmp = tmp_path_factory.mktemp("kvpipe")
    (tmp / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    (tmp / "recipe.yaml").write_text("# tiny\n" + yaml.safe_dump(RECIPE))
    dry = _in_process(tmp, dry_run=True)
    assert not (tmp / "exp").exists()  # a dry run writes nothing
    first = run_lmlab(*_pipeline_args(tmp, "--train-iters", "3"), check=0)
    again = _in_process(tmp, dry_run=False)
    return tmp, dry, first, again


def test_dry_run_plans_and_runs_nothing(exp):
    tmp, dry, first, _ = exp
    assert "dry run: nothing was run" in dry and "will be generated" in dry
    assert dry.count("-m lmlab train") == 2 and dry.count("-m lmlab retrieval eval") == 2
    # the plan names exactly the run directories the real run then used
    train_dirs = sorted((tmp / "exp" / "runs" / "train").glob("*-s0-*"))
    assert len(train_dirs) == 2 and all(str(d) in dry for d in train_dirs)


def test_pipeline_report_structure_and_counts(exp):
    tmp, _, first, _ = exp
    report_dir = tmp / "exp" / "report"
    text = (report_dir / "report.md").read_text()
    for heading in ("## Setup", "## Results", "### Expected effects", "## Learning curves"):
        assert heading in text
    for plot in ("acc_by_length.png", "acc_by_position.png", "accuracy_heatmaps.png"):
        assert (report_dir / "plots" / plot).stat().st_size > 1000
    assert (report_dir / "plots" / "coverage.png").exists()
    assert json.loads((report_dir / "status.json").read_text())["state"] == "done"
    comp = json.loads((report_dir / "comparison.json").read_text())
    assert set(comp["scenarios"]) == {"baseline_mixed", "short_only"}
    for summary in comp["scenarios"].values():
        n = summary["overall"]["n"]
        assert n == 40
        assert sum(c["n"] for c in summary["by_length"].values()) == n
        assert sum(c["n"] for c in summary["by_position"].values()) == n
        assert (
            summary["by_length"][">128"]["n"] == 0 and summary["by_length"][">128"]["ci95"] is None
        )
        lo, hi = summary["overall"]["ci95"]
        assert lo <= summary["overall"]["accuracy"] <= hi
    # the training runs really trained the requested steps on their own scenario
    for d in (tmp / "exp" / "runs" / "train").glob("*-s0-*"):
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        assert cfg["steps"] == 3 and cfg["model"]["seq_len"] >= 64
        assert list(cfg["data"]["sources"])[0].endswith(d.name.split("-s0-")[0] + "_train")


def test_eval_run_outputs(exp):
    tmp, *_ = exp
    runs = sorted((tmp / "exp" / "runs" / "eval").glob("*-s0-*"))
    assert len(runs) == 2
    res = json.loads((runs[0] / "results.json").read_text())
    preds = pl.read_parquet(runs[0] / "predictions.parquet")
    assert len(preds) == res["samples"] == 40
    assert preds["correct"].sum() == res["summary"]["overall"]["correct"]
    assert (preds["correct"] == (preds["prediction"] == preds["value"])).all()
    assert "accuracy" in (runs[0] / "metrics.jsonl").read_text()
    assert "| overall | all |" in (runs[0] / "report.md").read_text()


def test_rerun_skips_finished_runs(exp):
    tmp, _, first, again = exp
    assert "2 runs, 2 already done, 0 to run" in first.stdout + again
    assert again.count("2 already done, 0 to run") == 2  # train and eval both skipped
    logs = list((tmp / "exp" / "runs").glob("*/*/sweep.log"))
    assert len(logs) == 4 and all(p.read_text().count("# attempt") == 1 for p in logs)


@pytest.fixture(scope="module")
def trained(exp):
    tmp, *_ = exp
    return tmp, sorted((tmp / "exp" / "runs" / "train").glob("baseline_mixed-s0-*"))[0]


def test_eval_max_samples_and_manifest(trained, tmp_path):
    tmp, run = trained
    cfg = EvalConfig(ckpt=str(run), manifest=str(tmp / "exp" / "kv_manifest.json"), max_samples=7)
    res = evaluate(cfg, run_dir=tmp_path / "ev", echo=lambda s: None)
    assert res["samples"] == 7 and res["summary"]["overall"]["n"] == 7
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["samples"] == 7


def test_eval_max_samples_must_be_positive(trained, lmlab_cli):
    tmp, run = trained
    proc = lmlab_cli(
        "retrieval", "eval", "--ckpt", run, "--data", tmp / "exp" / "eval", "--max-samples", "0"
    )  # fmt: skip
    assert proc.returncode == 1 and "max_samples" in proc.stderr and "at least 1" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    with pytest.raises(LmlabError, match="at least 1"):
        resolve(EvalConfig, sets=["max_samples=-3"])


def test_eval_dir_without_manifest(trained, tmp_path):
    tmp, run = trained
    bare = tmp_path / "bare"
    shutil.copytree(tmp / "exp" / "eval", bare)
    (bare / "manifest.json").unlink()
    with pytest.raises(LmlabError, match="no manifest.json, so not a retrieval split"):
        evaluate(EvalConfig(ckpt=str(run), data=str(bare)), run_dir=tmp_path / "ev")
    assert not (tmp_path / "ev").exists()  # refused before any run directory is made


def test_eval_tokenizer_mismatch(trained, tmp_path):
    tmp, run = trained
    other = load_spec(tmp / "spec.yaml", ["words.seed=7"])  # other words -> other tokenizer
    generate(other, tmp_path / "other", progress=False, echo=lambda s: None)
    man = json.loads((tmp_path / "other" / "eval" / "manifest.json").read_text())
    with pytest.raises(LmlabError, match="tokenizer mismatch") as e:
        evaluate(EvalConfig(ckpt=str(run), data=str(tmp_path / "other" / "eval")))
    assert man["tokenizer"]["hash"] in str(e.value)


def test_eval_missing_manifest_file(trained, tmp_path):
    _, run = trained
    with pytest.raises(LmlabError, match="manifest not found"):
        evaluate(EvalConfig(ckpt=str(run), manifest=str(tmp_path / "nope.json")))
