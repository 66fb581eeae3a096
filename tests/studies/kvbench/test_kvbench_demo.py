"""`lmlab kvbench demo` on a folder shaped like the retrieval demo's (eval split + a finished
baseline_mixed run), read as files; the retrieval report gets one link to the bench's report."""

import json
import shutil

import polars as pl
import pytest

from lmlab.errors import LmlabError
from lmlab.studies.kvbench.config import KvbenchConfig
from lmlab.studies.kvbench.demo import LINK_TITLE, find_baseline, link_reports, run_bench_demo
from lmlab.studies.kvbench.engines import random_checkpoint


def fake_retrieval_demo(root):
    split = root / "eval"
    split.mkdir(parents=True)
    keys = [f"k{i}" for i in range(30)]
    prompts, values, pairs = [], [], []
    for n in (3, 6, 9, 12, 15, 18, 21, 24):
        lines = "".join(f"{k} v{k}\n" for k in keys[:n])
        prompts.append(f"{lines}Q {keys[n // 2]}\nA")
        values.append(f"v{keys[n // 2]}")
        pairs.append(n)
    pl.DataFrame({"prompt": prompts, "value": values, "num_pairs": pairs}).write_parquet(
        split / "samples.parquet"
    )
    (split / "manifest.json").write_text(json.dumps({"files": {"samples": "samples.parquet"}}))
    cfg = KvbenchConfig.model_validate(
        {"dataset": {"kind": "retrieval", "path": str(split)}, "engine": {"random_init": {}}}
    )
    ckpt = random_checkpoint(cfg.engine.random_init, cfg, root / "tmp")
    run = root / "runs" / "train" / "baseline_mixed-s0-abcd1234"
    shutil.copytree(ckpt, run / "checkpoints" / "latest")
    return run


def test_demo_finds_the_baseline_run_and_links_the_reports(tmp_path):
    with pytest.raises(LmlabError, match="no finished baseline_mixed training run"):
        find_baseline(tmp_path)
    run = fake_retrieval_demo(tmp_path)
    with pytest.raises(LmlabError, match="no finished baseline_mixed"):
        find_baseline(tmp_path)  # not done yet: no status.json
    (run / "status.json").write_text(json.dumps({"state": "done"}))
    assert find_baseline(tmp_path) == run

    sets = [
        "bins.count=2",
        "sampling.n_per_bin=2",
        "grid.policies=[snapkv, random]",
        "grid.budgets=[1.0, 0.25]",
        "engine.batch_size=4",
        "analysis.bootstrap=200",
        "dataset.max_new_tokens=3",
    ]
    report = run_bench_demo(tmp_path, None, sets, echo=lambda s: None)
    assert report == (tmp_path / "kvbench" / "report.md").resolve()
    text = report.read_text()
    assert "retrieval__eval" in text and "first_word" in text
    assert "`random` @ 0.25: verified" in text

    retrieval_report = tmp_path / "report" / "report.md"
    retrieval_report.parent.mkdir()
    retrieval_report.write_text("# retrieval\n")
    link_reports(retrieval_report, report)
    link_reports(retrieval_report, report)  # once only
    linked = retrieval_report.read_text()
    assert linked.count(LINK_TITLE) == 1 and "(../kvbench/report.md)" in linked
