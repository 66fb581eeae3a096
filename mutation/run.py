"""Mutation testing of the modules the studies trust: `make mutation` (not part of `make test`).

Each module is mutated by mutmut in its own scratch copy of the repository (mutation/work/NAME,
git-ignored) and checked against its relevant test files only; mutmut further runs, per mutant,
just the tests that call the mutated function. The shared settings live in pyproject.toml's
[tool.mutmut]; this script adds the module and its tests.

Writes mutation/summary.md: killed / survived / timeout per module, and the kill rate over the
mutants that are not equivalent (listed, each with a one-line reason, in mutation/equivalent.py).

    python mutation/run.py                  # every module
    python mutation/run.py kv_policies chat # some of them
    python mutation/run.py --report         # rewrite summary.md from the last results
    python mutation/run.py --survivors kv   # the diff of each surviving mutant of a module
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work"
sys.path.insert(0, str(HERE))

from equivalent import EQUIVALENT  # noqa: E402

# module -> (source file, the test files that exercise it, and any other pytest selection)
MODULES: dict[str, tuple[str, list[str]]] = {
    "kv": (
        "lmlab/model/kv.py",
        ["tests/model/test_kv.py", "tests/model/test_kv_policies.py", "tests/model/test_gpt.py"],
    ),
    "kv_policies": (
        "lmlab/model/kv_policies.py",
        ["tests/model/test_kv.py", "tests/model/test_kv_policies.py"],
    ),
    "sampling": ("lmlab/model/sampling.py", ["tests/model/test_sampling.py"]),
    "engine": (
        "lmlab/model/engine.py",
        [
            "tests/model/test_engine.py",
            "tests/model/test_engine_requests.py",
            "tests/model/test_engine_properties.py",
            "tests/model/test_kv.py",
            "tests/model/test_kv_policies.py",
        ],
    ),
    # the engine's step loop (batched prefill, decode, row bookkeeping) lives in batch.py
    "batch": (
        "lmlab/model/batch.py",
        [
            "tests/model/test_engine.py",
            "tests/model/test_engine_requests.py",
            "tests/model/test_engine_properties.py",
            "tests/model/test_kv_policies.py",
        ],
    ),
    "chat": ("lmlab/text/chat.py", ["tests/text/test_chat.py"]),
    "loader": ("lmlab/data/loader.py", ["tests/data/test_loader.py"]),
    # the trainer's own tests take seconds each: the direct-Trainer branch tests only (the
    # end-to-end ones in test_trainer.py and the torchrun run would take hours here)
    "trainer": (
        "lmlab/train/trainer.py",
        ["tests/train/test_trainer_branches.py", "-k", "not matches_one_process"],
    ),
}

# mutmut's exit-code classes, folded into what the summary reports
STATUS = {
    "killed": "killed",
    "survived": "survived",
    "timeout": "timeout",
    "suspicious": "timeout",
    "no tests": "no_tests",
    "skipped": "skipped",
    "segfault": "killed",
    "caught by type check": "killed",
}


def prepare(name: str) -> Path:
    """A fresh scratch copy with this module's [tool.mutmut]."""
    source, tests = MODULES[name]
    work = WORK / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "lmlab", work / "lmlab", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    settings = {
        **base,
        "only_mutate": [source],
        "pytest_add_cli_args_test_selection": [
            t for t in tests if not t.startswith("tests/") or (ROOT / t.split("::")[0]).exists()
        ],
    }
    lines = ["[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    pytest_ini = (ROOT / "pyproject.toml").read_text().split("[tool.pytest.ini_options]")[1]
    pytest_ini = pytest_ini.split("\n[")[0]
    (work / "pyproject.toml").write_text(
        "\n".join(lines) + "\n\n[tool.pytest.ini_options]" + pytest_ini
    )
    return work


def mutmut(work: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "mutmut"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.run(
        [str(exe), *args], cwd=work, env=env, text=True, capture_output=capture, check=False
    )


def results(name: str) -> dict[str, str] | None:
    """mutant name -> status of the last run of this module (None: never run)."""
    work = WORK / name
    if not (work / "mutants").exists():
        return None
    proc = mutmut(work, "results", "--all", "true", capture=True)
    out = {}
    for line in proc.stdout.splitlines():
        key, sep, status = line.strip().rpartition(": ")
        if sep and key.startswith("lmlab"):
            out[key] = STATUS.get(status, status)
    return out


def summarise(names: list[str]) -> str:
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    rows, notes = [], []
    for name in names:
        res = results(name)
        if res is None:
            continue
        count = {s: sum(1 for v in res.values() if v == s) for s in set(STATUS.values())}
        equivalent = {m: why for m, why in EQUIVALENT.items() if res.get(m) == "survived"}
        judged = count["killed"] + count["survived"] + count["timeout"] - len(equivalent)
        caught = count["killed"] + count["timeout"]  # a mutant that hangs the tests is caught
        unchecked = len(res) - sum(count.values())
        rate = f"{caught / judged if judged else 1.0:.1%}"
        if unchecked:  # an interrupted run: say so rather than print a rate of a few mutants
            rate = f"incomplete: {len(res) - unchecked} of {len(res)} checked"
        rows.append(
            f"| {MODULES[name][0]} | {len(res)} | {count['killed']} | {count['survived']} | "
            f"{count['timeout']} | {count['no_tests']} | {len(equivalent)} | {rate} |"
        )
        left = sorted(m for m, s in res.items() if s == "survived" and m not in equivalent)
        if equivalent:
            notes.append(f"\n### {name}: equivalent survivors\n")
            notes += [f"- `{m}`: {why}" for m, why in sorted(equivalent.items())]
        if left:
            notes.append(f"\n### {name}: surviving mutants not (yet) judged equivalent\n")
            notes += [f"- `{m}`" for m in left]
    head = [
        f"# Mutation testing ({today})",
        "",
        "`make mutation` (mutmut, one scratch copy per module, each against its own tests).",
        "Kill rate = (killed + timeout) / (all tested - equivalent survivors).",
        "",
        "| module | mutants | killed | survived | timeout | no tests | equivalent | kill rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + rows + notes) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help=f"some of: {', '.join(MODULES)}")
    ap.add_argument("--report", action="store_true", help="only rewrite summary.md")
    ap.add_argument("--survivors", action="store_true", help="show surviving mutants' diffs")
    ap.add_argument("--max-children", type=int, default=2, help="parallel test workers")
    args = ap.parse_args()
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        print(f"unknown module(s) {unknown}; choose from {', '.join(MODULES)}", file=sys.stderr)
        return 2
    if args.survivors:
        for name in args.modules or list(MODULES):
            for mutant, status in sorted((results(name) or {}).items()):
                if status == "survived" and mutant not in EQUIVALENT:
                    diff = mutmut(WORK / name, "show", mutant, capture=True).stdout
                    changed = [
                        ln
                        for ln in diff.splitlines()
                        if ln[:1] in "+-" and ln[:2] not in ("++", "--")
                    ]
                    print(f"== {mutant}\n" + "\n".join(changed))
        return 0
    if not args.report:
        for name in args.modules or list(MODULES):
            print(f"== mutating {MODULES[name][0]}", flush=True)
            work = prepare(name)
            mutmut(work, "run", "--max-children", str(args.max_children))
    text = summarise(list(MODULES))
    (HERE / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
