"""One run-directory format for every command that produces results.

    runs/<name>-<hash8>/
      config.yaml      the fully resolved config (what actually ran)
      metrics.jsonl    one JSON object per logged step, appended as the run goes
      metrics.parquet  the same, written at the end
      checkpoints/     latest, best, step_N
      status.json      written LAST and atomically: state, final and best metrics, timings

A run without status.json is incomplete (running, or killed); a crash writes state "failed";
Ctrl-C or SIGTERM writes state "interrupted" (resumable, not failed).

One process writes a run directory: `create` takes an OS lock on `<run>/.lock` (see `lock.py`)
that the kernel drops when the process dies, so a second writer fails at once with the holder's
pid and a kill never leaves a stale lock. A finished run keeps its record: a rerun that logs
nothing new leaves status.json as it was (`was_done`, `previous_status`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lmlab import __version__
from lmlab.config import config_hash, dump_yaml
from lmlab.errors import LmlabError
from lmlab.paths import atomic_file, atomic_write_text, runs_root
from lmlab.runs.lock import LOCK_FILE, DirLock, acquire

# The direction of a metric when nobody names it (a sweep's `mode:`, a recipe's metric modes and
# `modes=` below override it). Rates first: a count per unit of time (`tokens_per_s`,
# `samples_per_sec`, `tok/s`) is higher-is-better, although it ends in `_s`.
# Then a name ending in a loss, error or duration word (`val_loss`, `val_bpb`, `ppl`, `error`,
# `latency`, `wall_s`, `ttft_ms`, `seconds`, `time`) is lower-is-better. Everything else
# (`accuracy`, `rewards/accuracies`, `reward`, `recall@10`, `ndcg@10`, `f1`, `mfu`) is
# higher-is-better.
RATE = re.compile(r"(per_|/)(s|sec|second|ms|min|minute|hour|h)$")
LOWER_IS_BETTER = re.compile(
    r"(loss|bpb|ppl|perplexity|error|err|latency|time|seconds|secs|_s|_ms)$"
)


def metric_mode(name: str, modes: dict[str, str] | None = None) -> str:
    """'min' or 'max' for metric `name`: an explicit entry in `modes` wins, else the rule above."""
    if modes and modes.get(name):
        return modes[name]
    key = name.lower()
    if RATE.search(key):
        return "max"
    return "min" if LOWER_IS_BETTER.search(key) else "max"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", name).strip("-") or "run"


def run_id(name: str, cfg: BaseModel | dict, exclude: tuple[str, ...] = ()) -> str:
    return f"{slug(name)}-{config_hash(cfg, exclude)}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class RunDir:
    """A run directory; `is_main=False` (DDP ranks > 0) makes every write a no-op."""

    def __init__(self, path: str | Path, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main
        self._started = time.time()
        self._started_iso = _now()
        self._lock: DirLock | None = None
        # the status of a finished run found by `create`; kept on disk until new work is logged
        self.previous_status: dict | None = None
        self._reopened = False
        self.metric_modes: dict[str, str] = {}  # a recipe's explicit directions (best/min/max)

    # -- layout
    @property
    def id(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    # -- creation
    @classmethod
    def create(
        cls,
        cfg: BaseModel | dict,
        *,
        name: str,
        run_dir: str | Path | None = None,
        root: str | Path | None = None,
        exclude: tuple[str, ...] = (),
        fresh: bool = False,
        is_main: bool = True,
    ) -> RunDir:
        """Lock and open `run_dir`, or `<root>/<name>-<hash8>`; write config.yaml.

        The lock is held until `finish` (or the process ends); another process holding it makes
        this raise LmlabError naming its pid. An old status is dropped (a rerun is not done until
        it says so), except a "done" one: that stays, as `previous_status`, until the rerun logs
        something new (`reopen`), so a rerun with nothing to do keeps the finished run's record.
        """
        path = Path(run_dir) if run_dir else Path(root or runs_root()) / run_id(name, cfg, exclude)
        run = cls(path, is_main=is_main)
        if is_main:
            run._lock = acquire(path)  # before anything is written: a second writer stops here
            if fresh:
                _clear(path)
            previous = read_status(path)
            if previous and previous.get("state") == "done":
                run.previous_status = previous
            else:
                run._drop_record()
            atomic_write_text(run.config_path, dump_yaml(cfg))
        return run

    @property
    def was_done(self) -> bool:
        """True when this directory held a finished run and nothing new has been logged since."""
        return self.previous_status is not None and not self._reopened

    def reopen(self) -> None:
        """New work starts on a finished run: its status is no longer true, so drop it (finish
        writes a new one). `log` and a `truncate_metrics` that drops rows call this."""
        if self.is_main and self.was_done:
            self._drop_record()
            self._reopened = True

    def _drop_record(self) -> None:
        self.status_path.unlink(missing_ok=True)
        (self.path / "metrics.parquet").unlink(missing_ok=True)  # stale until finish() rewrites it

    def release(self) -> None:
        """Release the run-directory lock (finish does; the process ending does too)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- metrics
    def log(self, step: int | None = None, **metrics: Any) -> None:
        if not self.is_main:
            return
        self.reopen()
        row = {"step": step, **metrics} if step is not None else dict(metrics)
        row.setdefault("time_s", round(time.time() - self._started, 3))
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=float) + "\n")

    def read_metrics(self) -> list[dict]:
        return read_metrics(self.path)

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, forget rows logged after the checkpoint so the log has no duplicates."""
        if not self.is_main or not self.metrics_path.exists():
            return
        all_rows = read_jsonl(self.metrics_path)
        rows = [r for r in all_rows if (r.get("step") or 0) <= after_step]
        if len(rows) == len(all_rows):
            return
        self.reopen()
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    # -- the end
    def finish(
        self,
        state: str = "done",
        *,
        error: str | None = None,
        extra: dict | None = None,
        modes: dict[str, str] | None = None,
    ) -> dict:
        """Write metrics.parquet, then status.json last; release the lock.

        A finished run that logged nothing new in this process (`was_done`) keeps its status
        as it was, whatever `state` says: nothing it records has changed."""
        if not self.is_main:
            return {}
        try:
            if self.was_done:
                return dict(self.previous_status or {})
            return self._write_status(state, error, extra, modes)
        finally:
            self.release()

    def _write_status(
        self, state: str, error: str | None, extra: dict | None, modes: dict[str, str] | None
    ) -> dict:
        # metrics.jsonl is the log of record while a run goes; parquet is derived from it here
        rows = read_jsonl(self.metrics_path) if self.metrics_path.exists() else []
        if rows:
            write_parquet(rows, self.path / "metrics.parquet")
        final, best = summarize(rows, {**self.metric_modes, **(modes or {})})
        status = {
            "state": state,
            "run_id": self.id,
            "final": final,
            "best": best,
            "error": error,
            "started": self._started_iso,
            "finished": _now(),
            "wall_s": round(time.time() - self._started, 3),
            "git_commit": git_commit(),
            "lmlab_version": __version__,
            "host": platform.node(),
            "python": sys.version.split()[0],
            "argv": sys.argv,
            **(extra or {}),
        }
        atomic_write_text(self.status_path, json.dumps(status, indent=2, default=str))
        return status

    @contextmanager
    def running(self, modes: dict[str, str] | None = None):
        """Mark the run "interrupted" on Ctrl-C or SIGTERM, "failed" (with the error) if the body
        raises, "done" otherwise. A finished run that logged nothing new keeps its status."""
        extra: dict = {}
        # the SIGTERM handler stays until the status is written: a second SIGTERM (a sweep's
        # children can get one from the sweep and one from the kernel when it dies) is ignored
        # instead of killing the process halfway through finish()
        with _sigterm_as_interrupt():
            try:
                yield extra
            except KeyboardInterrupt as e:
                error = f"interrupted {e}".strip()
                self.finish("interrupted", error=error, extra=extra, modes=modes)
                raise
            except BaseException as e:
                if os.environ.get("LMLAB_DEBUG"):
                    extra["traceback"] = traceback.format_exc()
                self.finish("failed", error=f"{type(e).__name__}: {e}", extra=extra, modes=modes)
                raise
            self.finish("done", extra=extra, modes=modes)


def _clear(path: Path) -> None:
    """Empty a run directory for a fresh start, keeping the lock file this process holds."""
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.name == LOCK_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (`kill`, a scheduler's preemption, a sweep stopping) ends the run like Ctrl-C, so
    its status says "interrupted". Only where SIGTERM still has its default action."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough; the status comes next
        raise KeyboardInterrupt("(SIGTERM)")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# ---------------------------------------------------------------- reading


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn LAST line (a killed writer) is dropped, others name file:line."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines):
                break
            raise LmlabError(f"{path}:{i}: malformed JSON line") from None
    return rows


def read_metrics(path: str | Path) -> list[dict]:
    """metrics.parquet when present (polars), else metrics.jsonl; [] when neither exists."""
    path = Path(path)
    pq = path / "metrics.parquet"
    if pq.exists():
        import polars as pl

        # parquet fills absent columns with nulls; rows read back as they were logged
        return [
            {k: v for k, v in r.items() if v is not None} for r in pl.read_parquet(pq).to_dicts()
        ]
    jl = path / "metrics.jsonl"
    return read_jsonl(jl) if jl.exists() else []


def write_parquet(rows: list[dict], path: Path) -> None:
    import polars as pl

    frames = [pl.DataFrame([r], strict=False) for r in rows]
    df = pl.concat(frames, how="diagonal_relaxed")
    with atomic_file(path) as tmp:
        df.write_parquet(tmp)


def summarize(rows: list[dict], modes: dict[str, str] | None = None) -> tuple[dict, dict]:
    """Final (last logged) and best value of every numeric metric."""
    final: dict[str, float] = {}
    best: dict[str, float] = {}
    for row in rows:
        for k, v in row.items():
            if k in ("step", "time_s") or not _finite(v):
                continue
            final[k] = v
            mode = metric_mode(k, modes)
            if k not in best or (v < best[k] if mode == "min" else v > best[k]):
                best[k] = v
    return final, best


def read_status(path: str | Path) -> dict | None:
    p = Path(path) / "status.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def run_state(path: str | Path) -> str:
    """done / failed / interrupted / incomplete (config but no status: running or killed)."""
    status = read_status(path)
    return status.get("state", "incomplete") if status else "incomplete"


def find_runs(root: str | Path, max_depth: int = 3) -> list[Path]:
    root = Path(root)
    found = []
    if (root / "config.yaml").exists():
        return [root]
    for depth in range(1, max_depth + 1):
        for p in root.glob("/".join(["*"] * depth) + "/config.yaml"):
            found.append(p.parent)
    return sorted(set(found))
