"""The stages, each skipped when its inputs (its config sections + the upstream stage's hash) are
unchanged, and redone with `force`. A stage's hash is recorded in the `stages` table after its
rows; any error becomes one line naming the config file, the stage and the cause.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from lmlab import config as C
from lmlab.errors import LmlabError
from lmlab.paths import atomic_write_text
from lmlab.studies.kvbench import db
from lmlab.studies.kvbench.config import KvbenchConfig, rebase_paths
from lmlab.studies.kvbench.datasets import source_fingerprint

STAGES = ("prepare", "run", "score", "analyze", "report")


def load_config(
    path: Path | None, sets: list[str] | None, base: dict | None = None
) -> KvbenchConfig:
    data = dict(base or {})
    source = "defaults"
    if path is not None:
        data = C.deep_merge(data, rebase_paths(C.load_file(path), Path(path).resolve().parent))
        source = str(path)
    if sets:
        data = C.apply_sets(data, sets)
        source += " + --set"
    return C.validate(KvbenchConfig, data, source)


class Bench:
    def __init__(
        self,
        cfg: KvbenchConfig,
        source: str = "config",
        echo: Callable[[str], None] = print,
    ):
        self.cfg, self.source, self.echo = cfg, source, echo
        self.out = cfg.out_dir()
        self.out.mkdir(parents=True, exist_ok=True)
        self.conn = db.connect(self.out / db.DB_NAME)
        self._engine = None

    @property
    def engine(self):
        if self._engine is None:
            from lmlab.studies.kvbench.engines import build_engine

            self._engine = build_engine(self.cfg, self.out)
        return self._engine

    # ---- hashes: what each stage depends on
    def input_hash(self, stage: str) -> str:
        c = self.cfg
        parts: dict = {"stage": stage}
        if stage == "prepare":
            parts |= {
                "dataset": c.dataset.model_dump(mode="json"),
                "files": source_fingerprint(c.dataset),
                "bins": c.bins.model_dump(mode="json"),
                "sampling": c.sampling.model_dump(mode="json"),
                "engine": c.engine.model_dump(mode="json"),
                "truncate": c.generation.truncate,
            }
            if c.generation.kv_suffix:  # (absent when 0, so older preparations stay valid)
                parts["kv_suffix"] = c.generation.kv_suffix
        elif stage == "run":
            parts |= {
                "engine": c.engine.model_dump(mode="json"),
                "grid": c.grid.model_dump(mode="json"),
                "generation": c.generation.model_dump(mode="json"),
            }
        elif stage == "analyze":
            parts |= {"analysis": c.analysis.model_dump(mode="json")}
        elif stage == "report":
            parts |= {"description": c.description}
        i = STAGES.index(stage)
        if i > 0:
            parts["upstream"] = db.stage_hash(self.conn, STAGES[i - 1])
        return C.config_hash(parts)

    def up_to_date(self, stage: str) -> bool:
        return db.stage_hash(self.conn, stage) == self.input_hash(stage)

    # ---- running a stage
    def stage(self, stage: str, force: bool = False) -> str:
        """Run one stage (its upstream must be done); returns 'done' or 'skipped'."""
        i = STAGES.index(stage)
        if i > 0 and db.stage_hash(self.conn, STAGES[i - 1]) is None:
            raise LmlabError(
                f"{self.source}: stage {stage}: run `{STAGES[i - 1]}` first (no finished "
                f"{STAGES[i - 1]} in {self.out / db.DB_NAME})"
            )
        want = self.input_hash(stage)
        if not force and db.stage_hash(self.conn, stage) == want:
            self.echo(f"{stage}: up to date (skipped; --force redoes it)")
            return "skipped"
        t0 = time.time()
        with db.Tx(self.conn):  # downstream stages are stale from here on
            for later in STAGES[i:]:
                db.forget_stage(self.conn, later)
        try:
            note = getattr(self, f"_{stage}")()
        except LmlabError as e:
            raise LmlabError(f"{self.source}: stage {stage}: {e}") from None
        except Exception as e:  # a bug or an unexpected library error: still one line
            if __import__("os").environ.get("LMLAB_DEBUG"):
                raise
            raise LmlabError(f"{self.source}: stage {stage}: {type(e).__name__}: {e}") from None
        with db.Tx(self.conn):
            db.mark_done(self.conn, stage, want, json.dumps(note, default=str))
        self.echo(f"{stage}: done in {time.time() - t0:.1f}s {json.dumps(note, default=str)}")
        return "done"

    def all(self, force: bool = False) -> list[str]:
        return [self.stage(s, force=force) for s in STAGES]

    def run_ids(self) -> list[str]:
        """The finished run stage's cells (its note records the grid hash)."""
        from lmlab.studies.kvbench.run import current_runs

        row = self.conn.execute("SELECT note FROM stages WHERE stage='run'").fetchone()
        ghash = json.loads(row[0])["grid_hash"] if row else ""
        return [r["run_id"] for r in current_runs(self.conn, self.cfg, ghash)]

    # ---- the stages
    def _prepare(self) -> dict:
        from lmlab.studies.kvbench.prepare import run_prepare

        atomic_write_text(self.out / "config.yaml", C.dump_yaml(self.cfg))
        return run_prepare(self.cfg, self.conn, self.engine, self.out)

    def _run(self) -> dict:
        from lmlab.studies.kvbench.run import run_grid

        return run_grid(
            self.cfg, self.conn, self.engine, db.stage_hash(self.conn, "prepare"), self.echo
        )

    def _score(self) -> dict:
        from lmlab.studies.kvbench.score import run_score

        return run_score(self.conn, self.run_ids())

    def _analyze(self) -> dict:
        from lmlab.studies.kvbench.analyze import run_analyze

        return run_analyze(self.cfg, self.conn, self.run_ids(), self.out)

    def _report(self) -> dict:
        from lmlab.studies.kvbench.report import write_report

        path = write_report(self.cfg, self.conn, self.run_ids(), self.out, self.source)
        return {"report": str(path)}
