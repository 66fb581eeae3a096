"""The planted bugs of issue 9, one at a time, each against the tests that should catch it.

Every bug is a one-line edit of the real source in a scratch copy (mutation/work/planted); the
test files named with it must fail. Prints the table "bug -> tests that fail" (also written to
mutation/planted.md when every bug was run) and exits 1 if a bug breaks no test.

    python mutation/planted.py            # all bugs
    python mutation/planted.py 3 7        # some of them (1-based)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work" / "planted"


@dataclass
class Bug:
    what: str
    path: str
    old: str
    new: str
    tests: list[str]


KV = ["tests/model/test_kv.py", "tests/model/test_kv_policies.py"]
SAMPLING = ["tests/model/test_sampling.py"]

BUGS = [
    Bug(
        "compress keeps the first k positions instead of the chosen ones",
        "lmlab/model/kv.py",
        "k_new[:, b, :, : keep[b]] = keys.gather(2, gather)",
        "k_new[:, b, :, : keep[b]] = keys[:, :, : keep[b]]",
        KV,
    ),
    Bug(
        "compress gathers the values in reverse",
        "lmlab/model/kv.py",
        "v_new[:, b, :, : keep[b]] = values.gather(2, gather)",
        "v_new[:, b, :, : keep[b]] = values.gather(2, gather).flip(2)",
        KV,
    ),
    Bug(
        "attention_scores without the causal mask",
        "lmlab/model/kv_policies.py",
        'logits = logits.masked_fill(key_pos[None, :] > q_pos[:, None], float("-inf"))',
        "logits = logits",
        KV,
    ),
    Bug(
        "attention_scores groups query heads with repeat, not repeat_interleave",
        "lmlab/model/kv_policies.py",
        "k = keys.float().repeat_interleave(group, dim=1)",
        "k = keys.float().repeat(1, group, 1, 1)",
        KV,
    ),
    Bug(
        "attention_scores drops the query offset",
        "lmlab/model/kv_policies.py",
        "q_pos = n - w + start + torch.arange(",
        "q_pos = start + torch.arange(",
        KV,
    ),
    Bug(
        "SnapKV pooling removed",
        "lmlab/model/kv_policies.py",
        "scores = _pool(scores, self.kernel, self.pooling)",
        "scores = scores",
        KV,
    ),
    Bug(
        "SnapKV max pooling ignored (always avg)",
        "lmlab/model/kv_policies.py",
        'if pooling == "max":',
        "if False:",
        KV,
    ),
    Bug(
        "SnapKV selects the observation window twice",
        "lmlab/model/kv_policies.py",
        "scores = attention_scores(queries[:, :, -w:], keys)[..., : n - w]",
        "scores = attention_scores(queries[:, :, -w:], keys)",
        KV,
    ),
    Bug(
        "random policy ignores its row",
        "lmlab/model/kv_policies.py",
        "torch.Generator().manual_seed(row_seed(self.seed, row))",
        "torch.Generator().manual_seed(row_seed(self.seed, 0))",
        KV,
    ),
    *[
        Bug(
            f"GenerationConfig.kv_{opt} does not reach make_policy",
            "lmlab/model/engine.py",
            f"{opt}=self.kv_{opt},",
            "",
            KV,
        )
        for opt in ("window", "kernel", "pooling", "sinks")
    ],
    Bug(
        "top-p turned into greedy for every p < 1",
        "lmlab/model/sampling.py",
        "drop = probs.cumsum(dim=-1) - probs >= top_p",
        "drop = probs.cumsum(dim=-1) - probs > 0",
        SAMPLING,
    ),
    Bug(
        "temperature division deleted",
        "lmlab/model/sampling.py",
        "logits = logits / temperature",
        "logits = logits",
        SAMPLING,
    ),
    Bug(
        "top-k applied only when k = 1",
        "lmlab/model/sampling.py",
        "if 0 < top_k < logits.shape[-1]:",
        "if top_k == 1:",
        SAMPLING,
    ),
    Bug(
        "SFT masking off",
        "lmlab/train/lm.py",
        "use_mask = cfg.data.use_mask if cfg.data.use_mask is not None else sft",
        "use_mask = False",
        [
            "tests/train/test_trainer_branches.py::test_sft_batches_mask_exactly_the_untrained_targets"
        ],
    ),
    Bug(
        "chat drops the banned role tokens",
        "lmlab/model/cli.py",
        "banned_tokens=role_token_ids(tok),",
        "banned_tokens=[],",
        ["tests/text/test_chat.py::test_chat_reply_stops_at_eot_and_skips_banned_role_tokens"],
    ),
    Bug(
        "chat drops the stop token",
        "lmlab/model/cli.py",
        "stop_tokens=[tok.eot_id],",
        "stop_tokens=[],",
        ["tests/text/test_chat.py::test_chat_reply_stops_at_eot_and_skips_banned_role_tokens"],
    ),
]


def fresh_copy() -> None:
    if WORK.exists():
        shutil.rmtree(WORK)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("lmlab", "tests"):
        shutil.copytree(ROOT / part, WORK / part, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", WORK / "pyproject.toml")


def failing_tests(bug: Bug) -> list[str] | str:
    """The tests that fail with the bug planted (a string when the bug could not be planted)."""
    target = WORK / bug.path
    original = target.read_text()
    if original.count(bug.old) != 1:
        return f"source line not found once in {bug.path}: {bug.old!r}"
    target.write_text(original.replace(bug.old, bug.new))
    try:
        env = {**os.environ, "PYTHONPATH": str(WORK), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *bug.tests],
            cwd=WORK,
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        target.write_text(original)
    return sorted(set(re.findall(r"^FAILED (\S+)", proc.stdout, flags=re.M)))


def main() -> int:
    picked = [int(a) for a in sys.argv[1:]] or list(range(1, len(BUGS) + 1))
    fresh_copy()
    missed = 0
    lines = ["| # | planted bug | tests that fail |", "|---|---|---|"]
    print("\n".join(lines))
    for i in picked:
        bug = BUGS[i - 1]
        failed = failing_tests(bug)
        if isinstance(failed, str) or not failed:
            missed += 1
            shown = failed or "**none**"
        else:
            names = sorted({f.split("::")[-1].split("[")[0] for f in failed})
            shown = ", ".join(f"`{n}`" for n in names[:4]) + (
                f" (+{len(names) - 4} more)" if len(names) > 4 else ""
            )
        lines.append(f"| {i} | {bug.what} (`{bug.path}`) | {shown} |")
        print(lines[-1], flush=True)
    if len(picked) == len(BUGS):
        (HERE / "planted.md").write_text(
            "# Planted bugs of issue 9 and the tests that catch them\n\n"
            "`python mutation/planted.py` plants each bug alone in a scratch copy.\n\n"
            + "\n".join(lines)
            + "\n"
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
