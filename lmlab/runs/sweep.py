"""Sweeps: expand a matrix of experiments × grid × seeds into runs of any lmlab command.

Each (experiment, seed) gets one run directory keyed by a hash of what it runs (command, base
config contents, overrides), so a rerun finds finished runs and only does the missing ones.

Stopping: each child runs in its own process group, and dies with the sweep (PR_SET_PDEATHSIG on
Linux, so even a SIGKILLed sweep leaves no orphan training). SIGINT/SIGTERM to the sweep are
forwarded to every child's group; the sweep waits for them (SIGKILL after `grace_s`, or at a
second signal), starts nothing new, and raises SweepInterrupted so the caller can summarise what
finished. A run that ends interrupted is "interrupted", not "failed", and is not retried.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from lmlab.config import Strict, config_hash, get_path, load_file, validate
from lmlab.errors import LmlabError
from lmlab.runs.rundir import metric_mode, read_metrics, read_status, slug, summarize


class MetricSpec(Strict):
    name: str
    mode: Literal["min", "max"] | None = None


class Experiment(Strict):
    name: str
    set: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] | None = Field(
        None, description="This experiment's seeds (None: the sweep's)."
    )


class SweepSpec(Strict):
    name: str
    description: str = ""
    command: str | list[str]
    base_config: str | None = None
    seeds: list[int] = Field(default_factory=lambda: [0])
    seed_key: str = "seed"
    experiments: list[Experiment] = Field(default_factory=list)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    metrics: list[str | MetricSpec] = Field(min_length=1)
    primary: str | None = None
    quick: dict[str, Any] = Field(default_factory=dict)
    retries: int = Field(default=1, ge=0)
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Extra summary columns: name -> dotted key read from each run's config.yaml.",
    )
    timeout_s: float | None = None
    out: str | None = None

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment names repeat: {names}")
        if len(set(self.seeds)) != len(self.seeds):
            # two cells with one seed are one run directory: two writers, one result counted twice
            raise ValueError(f"seeds repeat: {self.seeds}; each (experiment, seed) runs once")
        if self.primary and self.primary not in self.metric_modes():
            raise ValueError(f"primary metric '{self.primary}' is not in metrics")
        return self

    def metric_modes(self) -> dict[str, str]:
        out = {}
        for m in self.metrics:
            spec = MetricSpec(name=m) if isinstance(m, str) else m
            out[spec.name] = spec.mode or metric_mode(spec.name)
        return out

    @property
    def primary_metric(self) -> str:
        return self.primary or next(iter(self.metric_modes()))


@dataclass
class PlannedRun:
    experiment: str
    seed: int
    overrides: dict[str, Any]
    run_dir: Path
    argv: list[str]
    status: str = "pending"
    attempts: int = 0
    wall_s: float = 0.0
    note: str = ""
    summary: dict = field(default_factory=dict)


def load_sweep(path: str | Path) -> tuple[SweepSpec, Path]:
    path = Path(path)
    return validate(SweepSpec, load_file(path), str(path)), path.parent


def _fmt(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _argv(spec: SweepSpec, base: Path | None, overrides: dict, run_dir: Path, seed: int, exp: str):
    tokens = shlex.split(spec.command) if isinstance(spec.command, str) else list(spec.command)
    subs = {"run_dir": str(run_dir), "seed": str(seed), "experiment": exp}
    has_run_dir = any("{run_dir}" in t for t in tokens)
    tokens = [t.format(**subs) if "{" in t else t for t in tokens]
    if tokens and tokens[0] == "lmlab":  # same interpreter as the sweep, installed or not
        tokens = [sys.executable, "-m", "lmlab", *tokens[1:]]
    if base:
        tokens += ["-c", str(base)]
    for key, value in overrides.items():
        tokens += ["--set", f"{key}={_fmt(value)}"]
    if not has_run_dir:
        tokens += ["--run-dir", str(run_dir)]
    return tokens


def plan(spec: SweepSpec, root: Path, out: Path, quick: bool = False, only: str | None = None):
    """Every (experiment × grid point × seed) with its overrides, run dir and command line."""
    base = (root / spec.base_config).resolve() if spec.base_config else None
    base_data = load_file(base) if base else {}
    experiments = spec.experiments or [Experiment(name="default")]
    keys = list(spec.grid)
    points = list(itertools.product(*(spec.grid[k] for k in keys))) if keys else [()]
    runs: list[PlannedRun] = []
    seen: dict[Path, PlannedRun] = {}
    for exp in experiments:
        for point in points:
            grid_part = dict(zip(keys, point, strict=True))
            name = exp.name
            if grid_part:
                label = ",".join(f"{k.split('.')[-1]}={v}" for k, v in grid_part.items())
                name = label if exp.name == "default" and not exp.set else f"{exp.name}/{label}"
            if only and name != only and exp.name != only:
                continue
            for seed in exp.seeds or spec.seeds:
                overrides = {**exp.set, **grid_part, **(spec.quick if quick else {})}
                overrides[spec.seed_key] = seed
                key = {"command": spec.command, "base": base_data, "overrides": overrides}
                run_dir = out / f"{slug(name.replace('/', '_'))}-s{seed}-{config_hash(key)}"
                argv = _argv(spec, base, overrides, run_dir, seed, name)
                if run_dir in seen:
                    raise LmlabError(
                        f"sweep {spec.name}: {name} seed={seed} is the same run as "
                        f"{seen[run_dir].experiment} seed={seen[run_dir].seed} (repeated grid "
                        "values?); each (experiment, seed) runs once"
                    )
                seen[run_dir] = PlannedRun(name, seed, overrides, run_dir, argv)
                runs.append(seen[run_dir])
    if only and not runs:
        raise LmlabError(f"--only {only!r}: no experiment of that name in the sweep")
    return runs


def check_run(run: PlannedRun, modes: dict[str, str]) -> str:
    """done only if the command said done AND the sweep's metrics parse from its logs."""
    status = read_status(run.run_dir)
    if status is None:
        return "incomplete" if run.run_dir.exists() else "pending"
    if status.get("state") != "done":
        return status.get("state", "failed")
    try:
        rows = read_metrics(run.run_dir)
    except (LmlabError, OSError, ValueError):
        rows = []
    final, best = summarize(rows, modes)
    if not any(m in final for m in modes):
        return "missing_metrics"
    run.summary = {"final": final, "best": best}
    run.wall_s = run.wall_s or float(status.get("wall_s") or 0.0)
    return "done"


class SweepInterrupted(KeyboardInterrupt):
    """The sweep was stopped by a signal; its children have exited. `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()  # resolved before any fork: the child only calls it
PR_SET_PDEATHSIG = 1


def _die_with(parent_pid: int):
    """A preexec_fn: the child gets SIGTERM when the thread that started it (a worker thread of
    the sweep, alive until the sweep ends) dies, however it dies."""

    def preexec() -> None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the sweep died before prctl took effect
            os._exit(1)

    return preexec if _PRCTL is not None else None


class SweepRunner:
    grace_s = 60.0  # after a forwarded signal, how long children get before SIGKILL

    def __init__(self, spec: SweepSpec, runs: list[PlannedRun], echo=print):
        self.spec, self.runs, self.echo = spec, runs, echo
        self.modes = spec.metric_modes()
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.RLock()  # the signal handler takes it, maybe twice
        self._done = 0
        self.stopped_by: int | None = None  # the signal that stopped the sweep

    def _start(self, run: PlannedRun, log) -> subprocess.Popen | None:
        """Start the child, unless the sweep is stopping (checked under the lock the signal
        handler takes, so a child is either never started or sees the forwarded signal)."""
        with self._lock:
            if self.stopped_by is not None:
                return None
            proc = subprocess.Popen(
                run.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,  # Ctrl-C at a terminal reaches the sweep only; it forwards
                preexec_fn=_die_with(os.getpid()),
            )
            self._procs.add(proc)
            return proc

    def _outcome(self, run: PlannedRun, rc: int) -> str:
        state = check_run(run, self.modes)
        if state == "done" and rc == 0:
            return "done"
        if self.stopped_by is not None or state == "interrupted":
            return "interrupted"
        return state if rc == 0 else "failed"

    def _execute(self, run: PlannedRun, total: int) -> None:
        if self.stopped_by is not None:
            run.status, run.note = "not_run", "sweep interrupted"
            return
        run.run_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, self.spec.retries + 2):
            t0 = time.time()
            with open(run.run_dir / "sweep.log", "a", encoding="utf-8") as log:
                proc = self._start(run, log)
                if proc is None:
                    break
                run.attempts = attempt
                log.write(f"$ {shlex.join(run.argv)}  # attempt {attempt}\n")
                log.flush()
                try:
                    rc = proc.wait(timeout=self.spec.timeout_s)
                except subprocess.TimeoutExpired:
                    _signal_group(proc, signal.SIGKILL)
                    rc = proc.wait()
                    run.note = f"timed out after {self.spec.timeout_s}s"
                finally:
                    with self._lock:
                        self._procs.discard(proc)
            run.wall_s = time.time() - t0
            run.status = self._outcome(run, rc)
            if rc != 0 and not run.note:
                run.note = f"exit {rc}; see {run.run_dir / 'sweep.log'}"
            if run.status == "done":
                run.note = ""
            if run.status in ("done", "interrupted"):  # interrupted is not retried
                break
        if run.attempts == 0:
            run.status, run.note = "not_run", "sweep interrupted"
            return
        with self._lock:
            self._done += 1
            self.echo(
                f"[{self._done}/{total}] {run.experiment} seed={run.seed}: {run.status}"
                f" ({run.wall_s:.1f}s{', ' + run.note if run.note else ''})"
            )

    def run(self, force: bool = False, max_runs: int | None = None, workers: int = 1) -> None:
        todo = []
        for run in self.runs:
            state = "pending" if force else check_run(run, self.modes)
            if state == "done":
                run.status, run.note = "done", "cached"
            else:
                todo.append(run)
        cached = len(self.runs) - len(todo)
        if max_runs is not None:
            for run in todo[max_runs:]:
                run.status, run.note = "not_run", "beyond --max-runs"
            todo = todo[:max_runs]
        self.echo(
            f"sweep {self.spec.name}: {len(self.runs)} runs, {cached} already done, "
            f"{len(todo)} to run with {workers} worker(s)"
        )
        with self._forward_signals(), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(lambda r: self._execute(r, len(todo)), todo))
        if self.stopped_by is not None:
            raise SweepInterrupted(self.stopped_by)

    def stop(self, signum: int) -> None:
        """Forward `signum` to every child's process group and start nothing new; a second
        call (a second Ctrl-C) or `grace_s` later, SIGKILL them."""
        with self._lock:
            again = self.stopped_by is not None
            self.stopped_by = self.stopped_by or signum
            procs = list(self._procs)
        for proc in procs:
            _signal_group(proc, signal.SIGKILL if again else signum)
        if not again:
            timer = threading.Timer(self.grace_s, self._kill_all)
            timer.daemon = True
            timer.start()

    def _kill_all(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            _signal_group(proc, signal.SIGKILL)

    @contextmanager
    def _forward_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, lambda signum, frame: self.stop(signum))
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @property
    def failed(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.status not in ("done", "not_run", "interrupted")]

    @property
    def interrupted(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.status == "interrupted"]


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    """Signal the child's process group (its own children too, e.g. torchrun's workers)."""
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def describe(run: PlannedRun) -> str:
    env = {k: v for k, v in os.environ.items() if k.startswith("LMLAB_")}
    prefix = " ".join(f"{k}={v}" for k, v in env.items())
    return (prefix + " " if prefix else "") + shlex.join(run.argv)


def _run_config(run: PlannedRun) -> dict:
    cfg_path = run.run_dir / "config.yaml"
    if cfg_path.exists():
        try:
            return yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            return {}
    return {}


def resolved_values(run: PlannedRun) -> dict[str, Any]:
    """The swept keys as the run's own config.yaml recorded them (what actually ran)."""
    data = _run_config(run)
    missing = object()
    out = {}
    for key, requested in run.overrides.items():
        actual = get_path(data, key, missing)
        out[key] = requested if actual is missing else actual
    return out


def column_values(run: PlannedRun, columns: dict[str, str]) -> dict[str, Any]:
    """The sweep's extra `columns` (name -> dotted key) from the run's config.yaml."""
    data = _run_config(run) if columns else {}
    return {name: get_path(data, key) for name, key in columns.items()}
