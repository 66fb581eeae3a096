"""`lmlab kvbench demo`: the bench on the retrieval demo's results, read as files.

The retrieval demo (`lmlab demo --out DIR`) leaves its eval split in DIR/eval (manifest.json +
samples.parquet) and its training runs in DIR/runs/train/<scenario>-s<seed>-<hash>/; the bench
takes the finished `baseline_mixed` run (the model trained on the eval split's own distribution)
and writes to DIR/kvbench/ unless told otherwise.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.studies.kvbench.pipeline import Bench, load_config

DEMO_CONFIG = Path(__file__).parent / "data" / "demo.yaml"
BASELINE = "baseline_mixed"


def find_baseline(retrieval: Path) -> Path:
    runs = sorted((retrieval / "runs" / "train").glob(f"{BASELINE}-s*"))
    done = []
    for r in runs:
        try:
            if json.loads((r / "status.json").read_text()).get("state") == "done":
                done.append(r)
        except (OSError, json.JSONDecodeError):
            continue
    if not done:
        raise LmlabError(
            f"{retrieval}: no finished {BASELINE} training run under runs/train/ (run "
            f"`lmlab demo --out {retrieval}` first)"
        )
    return done[0]


def demo_sets(retrieval: Path, out: Path | None) -> dict:
    retrieval = retrieval.resolve()
    split = retrieval / "eval"
    if not (split / "manifest.json").is_file():
        raise LmlabError(f"{retrieval}: no eval split (eval/manifest.json); run `lmlab demo` first")
    return {
        "dataset": {"path": str(split)},
        "engine": {"checkpoint": str(find_baseline(retrieval))},
        "output": {"dir": str((out or retrieval / "kvbench").resolve())},
    }


def run_bench_demo(
    retrieval: Path,
    out: Path | None,
    sets: list[str],
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> Path:
    from lmlab import config as C

    t0 = time.time()
    base = C.deep_merge(C.load_file(DEMO_CONFIG), demo_sets(Path(retrieval), out))
    cfg = load_config(None, sets, base=base)
    bench = Bench(cfg, source=f"{DEMO_CONFIG} (lmlab kvbench demo)", echo=echo)
    bench.all(force=force)
    echo(f"kvbench demo finished in {time.time() - t0:.0f} s")
    return bench.out / "report.md"


LINK_TITLE = "## KV-compression bench on the baseline checkpoint"


def link_reports(retrieval_report: Path, kv_report: Path) -> None:
    """Append (once) a section to the retrieval demo's report that points at the bench's report,
    so `make demo` ends in one report linking both."""
    if not retrieval_report.is_file() or not kv_report.is_file():
        return
    text = retrieval_report.read_text(encoding="utf-8")
    if LINK_TITLE in text:
        return
    rel = os.path.relpath(kv_report.resolve(), retrieval_report.resolve().parent)
    with open(retrieval_report, "a", encoding="utf-8") as f:
        f.write(
            f"\n{LINK_TITLE}\n\n`lmlab kvbench demo` ran the baseline_mixed model on this eval "
            f"split under six KV policy configurations x four budgets (the answer cue fed after compression): [{rel}]({rel}).\n"
        )
