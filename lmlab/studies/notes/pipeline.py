"""Run the notes workflow's phases through the one core training loop (`lmlab.train.run.train`).

pretrain: the pretrain mix of caches; validation on `val_pretrain_source` (or the mix).
sft:      the SFT mix, starting from `init_from` (default: the best checkpoint of this config's
          own pretrain run, which must be finished).
pipeline: pretrain, then SFT from the best pretrain checkpoint. A finished pretrain run is not
          trained again (resume finds it done), so a rerun goes straight to SFT.

Each run directory gets `resolved_settings.json` beside the core's `config.yaml`: the notes
config, the translated TrainConfig, the caches with their weights and token counts, the
checkpoint SFT started from, and the validation loss before the first step (`val_before`).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmlab import __version__
from lmlab.errors import LmlabError
from lmlab.model.checkpoint import resolve_checkpoint
from lmlab.paths import atomic_write_text, runs_root
from lmlab.runs.rundir import read_metrics, read_status, run_id
from lmlab.studies.notes.config import NotesConfig, check_caches, to_train_config
from lmlab.train.config import NOT_IN_RUN_ID, TrainConfig
from lmlab.train.dist import is_main_process

SETTINGS_FILE = "resolved_settings.json"


@dataclass
class PhasePlan:
    phase: str
    train_cfg: TrainConfig  # prepared: vocab size and architecture filled in
    run_dir: Path
    caches: dict[str, dict]  # name -> {path, weight, tokens}
    val_source: str
    init_from: str | None = None


@dataclass
class PhaseResult:
    phase: str
    run_dir: Path
    val_before: dict = field(default_factory=dict)
    final: dict = field(default_factory=dict)
    best: dict = field(default_factory=dict)
    seconds: float = 0.0

    def line(self) -> str:
        before = self.val_before.get("val_loss")
        after = self.final.get("val_loss")
        best = self.best.get("val_loss")
        fmt = lambda v: "?" if v is None else f"{v:.4f}"  # noqa: E731
        return (
            f"{self.phase}: val_loss {fmt(before)} -> {fmt(after)} (best {fmt(best)}) "
            f"in {self.seconds:.1f} s  [{self.run_dir}]"
        )


def _longer_than(shard_dir: Path, limit: int) -> int:
    """Documents (bos included) longer than `limit` tokens: a doc-per-row loader cuts their ends."""
    import numpy as np

    from lmlab.data.shards import ShardDir

    d, n = ShardDir(shard_dir), 0
    for i in range(d.n_shards):
        ends = np.append(d.doc_starts(i)[1:], len(d.tokens(i)))
        n += int(((ends - d.doc_starts(i)) > limit).sum())
    return n


def _cache_info(
    caches: dict[str, Path], mix: dict[str, float], row_tokens: int | None
) -> dict[str, dict]:
    info = {}
    for name, path in caches.items():
        tokens, long = {}, {}
        for split in ("train", "val"):
            meta = json.loads((path / split / "meta.json").read_text(encoding="utf-8"))
            tokens[split] = meta["counts"]["tokens"]
            if row_tokens is not None:
                long[split] = _longer_than(path / split, row_tokens)
        info[name] = {"path": str(path), "weight": mix.get(name, 0.0), "tokens": tokens}
        if row_tokens is not None:
            info[name]["longer_than_context"] = long
    return info


def _truncation_notes(p: PhasePlan) -> list[str]:
    """SFT rows hold seq_len + 1 tokens of one conversation: say when some will be cut."""
    notes = []
    limit = p.train_cfg.model.seq_len + 1
    for name, info in p.caches.items():
        long = info.get("longer_than_context", {})
        if any(long.values()):
            notes.append(
                f"note: sft/{name} has {long.get('train', 0)} train and {long.get('val', 0)} val "
                f"conversations longer than seq_len + 1 = {limit} tokens; the loader cuts their "
                f"ends. To drop their oldest turns instead, rebuild the SFT caches with "
                f"`lmlab cache build-all --sft-context {limit} --force`."
            )
    return notes


def plan(cfg: NotesConfig, phase: str, init_from: str | None = None) -> PhasePlan:
    """The TrainConfig and run directory one phase will use (nothing is trained)."""
    from lmlab.train.lm import prepare

    caches = check_caches(cfg, phase)
    if phase == "pretrain":
        mix, val_source = cfg.data.mix_pretrain, cfg.data.val_pretrain_source
    else:
        mix, val_source = cfg.data.mix_sft, None
        init_from = init_from or cfg.training.sft.init_from or pretrain_checkpoint(cfg)
    sources = {str(caches[n]): w for n, w in mix.items()}
    val_sources = {str(caches[val_source]): 1.0} if val_source else None
    train_cfg, _, _, _ = prepare(to_train_config(cfg, phase, sources, init_from, val_sources))
    run_dir = runs_root() / run_id(train_cfg.name, train_cfg, exclude=NOT_IN_RUN_ID)
    row_tokens = train_cfg.model.seq_len + 1 if phase == "sft" else None
    return PhasePlan(
        phase,
        train_cfg,
        run_dir,
        _cache_info(caches, mix, row_tokens),
        val_source or "mix",
        init_from,
    )


def pretrain_checkpoint(cfg: NotesConfig) -> str:
    """The best (else latest) checkpoint of this config's finished pretrain run."""
    p = plan(cfg, "pretrain")
    status = read_status(p.run_dir) or {}
    if status.get("state") != "done":
        state = status.get("state", "not started" if not p.run_dir.exists() else "incomplete")
        raise LmlabError(
            f"SFT starts from this config's pretrain run {p.run_dir}, which is {state}: run "
            "`lmlab notes train --phase pretrain` with the same profile/config first, use "
            "--phase pipeline, or pass --init-from RUN"
        )
    try:
        return str(resolve_checkpoint(p.run_dir))  # best, else latest
    except LmlabError:
        raise LmlabError(f"pretrain run {p.run_dir} has no checkpoint") from None


def run_phase(
    cfg: NotesConfig, phase: str, resume: bool = True, init_from: str | None = None
) -> PhaseResult:
    from lmlab.train.run import train

    p = plan(cfg, phase, init_from)
    started = time.perf_counter()
    settings_path = p.run_dir / SETTINGS_FILE
    if is_main_process():
        for note in _truncation_notes(p):
            print(note, file=sys.stderr)
        if not resume and p.run_dir.exists():
            shutil.rmtree(p.run_dir)  # here, not in train(), so the settings below survive
        settings = {
            "phase": phase,
            "run_dir": str(p.run_dir),
            "notes_config": cfg.model_dump(mode="json"),
            "train_config": p.train_cfg.model_dump(mode="json"),
            "caches": p.caches,
            "val_source": p.val_source,
            "init_from": p.init_from,
            "lmlab_version": __version__,
        }
        atomic_write_text(settings_path, json.dumps(settings, indent=2) + "\n")
    run = train(p.train_cfg, run_dir=p.run_dir, resume=True)
    status = read_status(run.path) or {}
    # the trainer validated before step 0 (eval_at_start): the loss the phase started from
    val_before = next((r for r in read_metrics(run.path) if r.get("step") == 0), {})
    val_before = {k: v for k, v in val_before.items() if k.startswith("val")}
    if is_main_process():
        settings["val_before"] = val_before
        atomic_write_text(settings_path, json.dumps(settings, indent=2) + "\n")
    return PhaseResult(
        phase,
        run.path,
        val_before,
        status.get("final", {}),
        status.get("best", {}),
        time.perf_counter() - started,
    )


def run(
    cfg: NotesConfig, phase: str | None = None, resume: bool = True, init_from: str | None = None
) -> list[PhaseResult]:
    """Run `phase` (default: the config's); a pipeline returns both phases' results."""
    phase = phase or cfg.phase
    if phase == "pipeline":
        pre = run_phase(cfg, "pretrain", resume)
        best = pretrain_checkpoint(cfg)
        return [pre, run_phase(cfg, "sft", resume, init_from=best)]
    if phase not in ("pretrain", "sft"):
        raise LmlabError(f"unknown phase {phase!r} (expected pretrain, sft or pipeline)")
    if phase == "pretrain" and init_from:
        raise LmlabError("--init-from is for --phase sft: pretraining starts from scratch")
    return [run_phase(cfg, phase, resume, init_from)]
