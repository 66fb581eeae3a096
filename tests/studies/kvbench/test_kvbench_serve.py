"""The openai engine against `lmlab serve` (a real subprocess on an ephemeral port): lmlab's server
applies the budgets and reports what it kept, so every compressed run is verified."""

import os
import re
import subprocess
import sys
import time

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from lmlab.studies.kvbench.pipeline import Bench, load_config  # noqa: E402


def test_the_bench_against_lmlab_serve_is_verified(tiny):
    # the random sanity model, written by a local-engine prepare, is what the server serves
    local = tiny()
    bench = Bench(load_config(local, None), source=str(local), echo=lambda s: None)
    ckpt = bench.engine.ckpt
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmlab", "serve", "--ckpt", str(ckpt), "--port", "0",
         "--model-name", "kvb"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        assert m, line + (proc.stderr.read() if proc.poll() is not None else "")
        base = m.group(1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(base[:-3] + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        path = tiny(
            **{
                "engine": {
                    "kind": "openai",
                    "base_url": base,
                    "model": "kvb",
                    "concurrency": 2,
                    "timeout_s": 60,
                    "retries": 0,
                },
                "output.dir": str(bench.out.parent / "served"),
            }
        )
        served = Bench(load_config(path, None), source=str(path), echo=lambda s: None)
        assert served.all() == ["done"] * 5
        rows = dict(served.conn.execute("SELECT policy || '@' || budget, verified FROM runs"))
        assert rows["snapkv@0.2"].startswith("verified"), rows
        changed = served.conn.execute(
            "SELECT COUNT(*) FROM requests a JOIN responses ra USING (request_id) "
            "JOIN requests b ON a.example_id = b.example_id JOIN responses rb "
            "ON rb.request_id = b.request_id WHERE a.run_id LIKE 'snapkv@0.2-%' "
            "AND b.run_id LIKE 'full@1-%' AND ra.text != rb.text"
        ).fetchone()[0]
        assert changed > 0  # the budget changed what the model answered
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
