"""Tiny bench configs: the shipped sanity JSONL, an untrained random model, few cells."""

import sqlite3
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
SANITY = ROOT / "configs" / "kvbench" / "sanity.yaml"
SANITY_DATA = ROOT / "configs" / "kvbench" / "data" / "sanity.jsonl"


def tiny_config(tmp_path: Path, **over) -> Path:
    """A config file in tmp_path: sanity's dataset and model, 4 examples, snapkv at 1.0 and 0.2."""
    data = yaml.safe_load(SANITY.read_text())
    data["dataset"]["files"] = [str(SANITY_DATA)]
    data["sampling"]["n_per_bin"] = 2
    data["engine"]["random_init"]["seq_len"] = 384
    data["grid"] = {"policies": ["snapkv"], "budgets": [1.0, 0.2]}
    data["output"] = {"dir": str(tmp_path / "bench")}
    for key, value in over.items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def db_counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: conn.execute(f"SELECT COUNT(*) FROM {n}").fetchone()[0] for n in names}
    finally:
        conn.close()


@pytest.fixture
def tiny(tmp_path):
    return lambda **over: tiny_config(tmp_path, **over)
