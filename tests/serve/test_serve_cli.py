"""`lmlab serve` as a user runs it: a subprocess on an ephemeral port, called with the openai client."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
import openai
import pytest


def test_lmlab_serve_answers_with_its_key_and_never_prints_it(tiny_run):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LMLAB_API_KEY": "k-123-secret"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmlab", "serve", "--ckpt", str(tiny_run), "--port", "0",
         "--max-batch", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        m = re.search(r"serving tiny-serve on (http://127\.0\.0\.1:\d+/v1)", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line
        base = m.group(1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(base[:-3] + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        client = openai.OpenAI(base_url=base, api_key="k-123-secret", max_retries=0)
        r = client.completions.create(model="tiny-serve", prompt="the cat", max_tokens=3)
        assert r.usage.completion_tokens <= 3 and r.choices[0].finish_reason in ("length", "stop")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert "k-123-secret" not in line + out + err


def test_lmlab_serve_refuses_bad_options(lmlab_cli, tiny_run):
    p = lmlab_cli("serve", "--ckpt", tiny_run, "--max-batch", "0", timeout=60)
    assert p.returncode == 1 and p.stderr.strip() == "error: --max-batch must be >= 1, got 0"
