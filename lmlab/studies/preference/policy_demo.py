"""The demo's policy stage (issue 16): SFT'd start -> DPO uniform vs density-aware -> answers.

On the demo's synthetic set (demo.py) the right answer is known: each topic prefers one marker
word. So the stage can judge answers by the generator's rule instead of a learnt reward model:

    1. SFT a small GPT on the training prompts, each answered with its chosen OR its rejected
       response (a coin flip per prompt): a start that writes well-formed answers and is
       indifferent between the two markers;
    2. DPO from it (the `dpo` recipe, frozen reference), uniform vs density-aware (each pair's
       loss times its prefix's weight, mean 1), equal steps;
    3. the greedy answer to every held-out test prompt: 1 if it carries the topic's preferred
       marker (and not the other), 0 for the other, 1/2 for neither or both; mean per group
       (rare vs common topics, reversed vs novel rules) with Wilson intervals.

Rare topics are the low-density prompts (demo report: mean density 0.38 against 0.72), so
rare vs common is the density split here. Runs live in OUT/runs (sft, dpo-uniform,
dpo-density); a rerun reuses the finished ones.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from lmlab.paths import atomic_write_text
from lmlab.runs.rundir import run_state
from lmlab.runs.stats import wilson
from lmlab.studies.preference.pairs import read_pairs
from lmlab.studies.preference.synthetic import TOPICS

MODEL = {"depth": 2, "n_embd": 64, "n_head": 4, "seq_len": 48}
POLICY_DEMO = {"sft_steps": 120, "dpo_steps": 60, "micro_batch": 32, "seed": 0}
ARMS = {"uniform": False, "density": True}


def _common(name: str, steps: int, seed: int) -> dict:
    return {
        "name": name,
        "seed": seed,
        "steps": steps,
        "micro_batch": POLICY_DEMO["micro_batch"],
        "eval_every": steps,
        "log_every": 25,
        "progress": False,
        "device": "cpu",
        "model": MODEL,
        "schedule": {"warmup_steps": min(10, steps // 10)},
    }


def train_sft(out: Path, steps: int, seed: int) -> Path:
    """A chat SFT on the training prompts, half answered with the chosen response."""
    from lmlab.data.from_files import shard_files
    from lmlab.text.tokenizer import load_tokenizer
    from lmlab.train.config import TrainConfig
    from lmlab.train.run import train

    data, run_dir = out / "data", out / "runs" / "sft"
    if run_state(run_dir) == "done":
        return run_dir
    if not (data / "sft" / "train").exists():
        rng = random.Random(seed)
        lines = []
        for p in read_pairs(data / "pairs_all.jsonl"):
            answer = p["chosen"] if rng.random() < 0.5 else p["rejected"]
            msgs = [*p["prefix"]["messages"], {"role": "assistant", "content": answer}]
            lines.append(json.dumps({"messages": msgs}))
        atomic_write_text(data / "sft_chats.jsonl", "\n".join(lines) + "\n")
        tok = load_tokenizer(data / "tokenizer")
        shard_files(
            [data / "sft_chats.jsonl"], tok, data / "tokenizer", data / "sft", kind="chat",
            progress=False,
        )  # fmt: skip
    cfg = TrainConfig.model_validate(
        {
            **_common("sft", steps, seed),
            "phase": "sft",
            "data": {"sources": {str(data / "sft"): 1.0}},
            "eval_batches": 4,
            "optim": {"lr": 1e-2, "lr_ref_width": 64},
        }
    )
    train(cfg, run_dir=run_dir)
    return run_dir


def train_dpo(out: Path, arm: str, sft: Path, steps: int, seed: int) -> Path:
    from lmlab.train.config import TrainConfig
    from lmlab.train.run import train

    data, run_dir = out / "data", out / "runs" / f"dpo-{arm}"
    if run_state(run_dir) == "done":
        return run_dir
    cfg = TrainConfig.model_validate(
        {
            **_common(f"dpo-{arm}", steps, seed),
            "recipe": "dpo",
            "init_from": str(sft),
            "optim": {"lr": 1e-3, "lr_ref_width": 64},
            "recipe_args": {
                "pairs": str(data / "pairs_all.jsonl"),
                "prefixes": str(data / "prefixes_all.jsonl"),
                "embeddings": str(data / "embeddings"),
                "density_aware": ARMS[arm],
                "beta": 0.1,
            },
        }
    )
    train(cfg, run_dir=run_dir)
    return run_dir


def marker_score(answer: str, topic) -> float:
    words = set(answer.split())
    good, bad = topic.preferred in words, topic.other in words
    return 1.0 if good and not bad else 0.0 if bad and not good else 0.5


def judge(run: Path, test: list[dict], max_new_tokens: int = 12) -> list[float]:
    from lmlab.studies.preference.policy_eval import _load_policy, answers

    model, tok = _load_policy(run)
    by_name = {t.name: t for t in TOPICS}
    said = answers(model, tok, [p["prefix"]["messages"] for p in test], max_new_tokens)
    return [marker_score(a, by_name[p["topic"]]) for a, p in zip(said, test, strict=True)]


def implicit_accuracy(run: Path, sft: Path, test: list[dict]) -> list[float]:
    """1 where the policy's implicit reward (log-ratio to the SFT start) of the chosen response
    beats the rejected one's, 1/2 on a tie (the SFT start itself ties everywhere)."""
    import torch

    from lmlab.studies.preference.dpo import fill_reference
    from lmlab.studies.preference.policy_eval import _load_policy
    from lmlab.studies.preference.rm_data import build_items

    model, tok = _load_policy(run)
    ref, _ = _load_policy(sft)
    items, _ = build_items(tok, test, model.cfg.seq_len)
    if len(items) != len(test):
        raise ValueError(f"{len(test) - len(items)} test pairs do not fit the policy's context")
    cpu = torch.device("cpu")
    lp, lp_ref = fill_reference(model, items, 64, cpu), fill_reference(ref, items, 64, cpu)
    margin = (lp[:, 0] - lp_ref[:, 0]) - (lp[:, 1] - lp_ref[:, 1])
    return [1.0 if m > 1e-6 else 0.0 if m < -1e-6 else 0.5 for m in margin]


GROUPS = {
    "rare": lambda p: p["kind"] == "rare",
    "common": lambda p: p["kind"] == "common",
    "rare-reversed": lambda p: p["rule"] == "reversed",
    "rare-novel": lambda p: p["rule"] == "novel",
}


def summarize_scores(scores: list[float], test: list[dict]) -> dict:
    out = {}
    for name, keep in GROUPS.items():
        s = [x for x, p in zip(scores, test, strict=True) if keep(p)]
        lo, hi = wilson(round(sum(s)), len(s))
        out[name] = {"n": len(s), "mean": sum(s) / len(s) if s else None, "ci95": [lo, hi]}
    return out


def run_policy_stage(out: Path, echo=print, sft_steps=None, dpo_steps=None) -> dict:
    """The stage on the demo's data folder (OUT/data, written by demo.prepare_data)."""
    import lmlab.studies.preference  # noqa: F401  (registers "dpo")

    t0 = time.time()
    out, seed = Path(out), POLICY_DEMO["seed"]
    sft = train_sft(out, sft_steps or POLICY_DEMO["sft_steps"], seed)
    echo(f"policy stage: SFT start ready ({time.time() - t0:.0f} s)")
    runs = {"sft": sft}
    for arm in ARMS:
        runs[f"dpo-{arm}"] = train_dpo(out, arm, sft, dpo_steps or POLICY_DEMO["dpo_steps"], seed)
        echo(f"policy stage: dpo-{arm} ready ({time.time() - t0:.0f} s)")
    test = read_pairs(out / "data" / "test_pairs.jsonl")
    results = {name: summarize_scores(judge(run, test), test) for name, run in runs.items()}
    implicit = {
        name: summarize_scores(implicit_accuracy(runs[name], sft, test), test)
        for name in runs
        if name != "sft"
    }
    res = {"answers": results, "implicit": implicit, "wall_s": time.time() - t0}
    res["config"] = POLICY_DEMO
    atomic_write_text(out / "policy_results.json", json.dumps(res, indent=2))
    atomic_write_text(out / "policy_report.md", policy_report(results, implicit, res["wall_s"]))
    for g in ("rare", "common"):
        echo(f"policy {g}: " + ", ".join(f"{a} {results[a][g]['mean']:.1%}" for a in results))
    return res


def _table(results: dict) -> list[str]:
    lines = ["| group | n | " + " | ".join(results) + " |", "|---|---|" + "---|" * len(results)]
    for g in GROUPS:
        cells = [
            f"{r[g]['mean']:.1%} [{r[g]['ci95'][0]:.1%}, {r[g]['ci95'][1]:.1%}]"
            for r in results.values()
        ]
        n = next(iter(results.values()))[g]["n"]
        lines.append(f"| {g} | {n} | " + " | ".join(cells) + " |")
    return lines


def policy_report(answers: dict, implicit: dict, wall: float) -> str:
    return "\n".join(
        [
            "# Policies: SFT start -> DPO uniform vs density-aware",
            "",
            f"SFT {POLICY_DEMO['sft_steps']} steps on the training prompts (chosen or rejected "
            f"by a coin flip), then DPO (beta 0.1, sigmoid, frozen reference) "
            f"{POLICY_DEMO['dpo_steps']} steps of {POLICY_DEMO['micro_batch']} pairs (density: "
            f"each pair's loss times its prefix's weight), seed {POLICY_DEMO['seed']}. Held-out "
            "test prompts only; 95% Wilson intervals.",
            "",
            "## What the policy prefers: implicit-reward accuracy on held-out pairs",
            "",
            "Share of test pairs whose chosen response gains more log-probability over the SFT "
            "start than the rejected one (DPO's implicit reward; comparable to the reward "
            "models' held-out accuracy in report.md).",
            "",
            *_table(implicit),
            "",
            "## What the policy says: greedy answers",
            "",
            "Share of greedy answers that carry the topic's preferred marker (1/2 for neither "
            "or both, which is what the SFT start, indifferent by construction, mostly does).",
            "",
            *_table(answers),
            "",
            f"The stage took {wall:.0f} s of wall time.",
            "",
        ]
    )
