"""GRPO's data: prompts, rewards, and the batch source that samples the groups.

The batch source is where generation happens: `next_batch()` draws prompts, lets the policy
answer each one G times in ONE engine call (one prefill per prompt, `num_samples=G`, with the
log-probability of every sampled token and of the stop token), scores the completions and turns
rewards into advantages. The objective (grpo.py) then only needs a forward pass. Its state is the
number of draws so far: the prompts and the sampling seeds of draw n depend only on (seed, n),
and the policy is restored from the checkpoint, so a resumed run samples exactly what the
uninterrupted run sampled.

Prompts are the distinct prefixes of a pairs file, rendered with the chat template for the
assistant's reply. Drawn uniformly, or with `density_aware` in proportion to their prefix's density
weight (rare prompts more often).

Rewards come from a reward-model checkpoint (`rm`: the reward at the last token of
prompt + completion + `<|eot|>`, the layout it was trained on) or, as a diagnostic, from a word
(`reward_word`: 1 when the completion says it, else 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.errors import LmlabError
from lmlab.model.engine import Engine, GenerationConfig, Request
from lmlab.model.kv_policies import row_seed
from lmlab.text.base import Tokenizer
from lmlab.text.chat import fit_for_reply, role_token_ids


@dataclass
class PromptItem:
    prefix_id: str
    ids: list[int]  # rendered for completion (ends with <|assistant|>)
    max_new_tokens: int  # the reply cap that fits the context
    weight: float = 1.0  # relative draw probability
    density: float | None = None


def build_prompts(
    tok: Tokenizer, pairs: list[dict], context: int, max_new_tokens: int, weights=None
) -> tuple[list[PromptItem], int]:
    """(one item per distinct prefix, prefixes skipped because they do not fit `context`)."""
    items, skipped, seen = [], 0, set()
    for p in pairs:
        pid = p["prefix_id"]
        if pid in seen:
            continue
        seen.add(pid)
        w = weights.get(pid) if weights is not None else None
        if weights is not None and w is None:
            raise LmlabError(f"prefix {pid} has no density weight (rerun `lmlab prefs embed`)")
        try:
            ids, cap = fit_for_reply(tok, p["prefix"]["messages"], context, max_new_tokens)
        except LmlabError:
            skipped += 1
            continue
        items.append(
            PromptItem(pid, ids, cap, w["weight"] if w else 1.0, w["density"] if w else None)
        )
    return items, skipped


# ---------------------------------------------------------------- rewards


class RewardModelScorer:
    """Rewards from a reward-model run, refusing one trained with another tokenizer."""

    def __init__(self, run: str, tok: Tokenizer, device):
        from lmlab.model.checkpoint import load_model, load_tokenizer_for
        from lmlab.model.heads import RewardModel

        model, _ = load_model(run, device=device)
        if not isinstance(model, RewardModel):
            raise LmlabError(f"--rm {run}: not a reward model (a {type(model).__name__})")
        theirs = load_tokenizer_for(run).hash
        if theirs != tok.hash:
            raise LmlabError(
                f"--rm {run}: the reward model was trained with tokenizer {theirs}, the policy "
                f"uses {tok.hash}: they must share one tokenizer"
            )
        self.model, self.eot, self.device = model.eval().requires_grad_(False), tok.eot_id, device
        self.context = model.cfg.seq_len - 1  # room for prompt + completion; + <|eot|>

    @torch.no_grad()
    def __call__(self, prompts: list[list[int]], completions: list[list[int]]) -> torch.Tensor:
        rows = [p + c + [self.eot] for p, c in zip(prompts, completions, strict=True)]
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        last = torch.tensor([len(r) - 1 for r in rows])
        return self.model(ids.to(self.device), last.to(self.device)).float().cpu()


class WordScorer:
    """1 when the completion contains `word` (a token of its own), else 0: a toy reward."""

    context = None

    def __init__(self, word: str, tok: Tokenizer):
        ids = tok.encode(word)
        if len(ids) != 1:
            raise LmlabError(f"reward_word {word!r} is {len(ids)} tokens; it must be one token")
        self.id = ids[0]

    def __call__(self, prompts: list[list[int]], completions: list[list[int]]) -> torch.Tensor:
        return torch.tensor([float(self.id in c) for c in completions])


def make_scorer(rm: str, reward_word: str | None, tok: Tokenizer, device):
    if reward_word:
        return WordScorer(reward_word, tok)
    if not Path(rm).exists():
        raise LmlabError(f"--rm {rm}: no such run")
    return RewardModelScorer(rm, tok, device)


# ---------------------------------------------------------------- advantages


def group_advantages(rewards: torch.Tensor, group: int, scale: str) -> tuple[torch.Tensor, dict]:
    """rewards [P*G] (prompt-major) -> (advantages [P*G], TRL's reward statistics).

    The advantage is the reward minus its group's mean, divided by the group's standard
    deviation (`group`), the batch's (`batch`: this rank's micro-batch, where TRL takes the whole
    generation batch) or nothing (`none`), plus 1e-4 as TRL."""
    grouped = rewards.view(-1, group)
    adv = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    group_std = grouped.std(dim=1)
    if scale == "group":
        adv = adv / (group_std.repeat_interleave(group) + 1e-4)
    elif scale == "batch":
        adv = adv / (rewards.std() + 1e-4)
    elif scale != "none":
        raise LmlabError(f"scale_rewards {scale!r}: expected group, batch or none")
    zero = torch.isclose(group_std, torch.zeros_like(group_std))
    return adv, {
        "reward": float(rewards.mean()),
        "reward_std": float(group_std.mean()),
        "frac_reward_zero_std": float(zero.float().mean()),
    }


# ---------------------------------------------------------------- the batch source


def sampling_config(item: PromptItem, args, tok: Tokenizer, seed: int, group: int):
    """G samples with log-probs (training), or one greedy answer when group is 0 (evaluation)."""
    return GenerationConfig(
        max_new_tokens=item.max_new_tokens,
        temperature=args.temperature if group else 0.0,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=seed,
        stop_tokens=(tok.eot_id,),
        banned_tokens=tuple(role_token_ids(tok)),
        num_samples=max(group, 1),
        logprobs=0 if group else None,
    )


def collate_groups(prompts, completions, old_logps, extra: dict) -> dict[str, torch.Tensor]:
    """ids [N, T] = prompt + completion (right-padded); targets [N, T]: the completion token each
    position predicts, -1 elsewhere; old [N, T]: its sampling log-prob, aligned with targets."""
    rows = [p + c for p, c in zip(prompts, completions, strict=True)]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.full((len(rows), width), -1, dtype=torch.long)
    old = torch.zeros(len(rows), width)
    for i, (p, c, lp) in enumerate(zip(prompts, completions, old_logps, strict=True)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        span = slice(len(p) - 1, len(p) - 1 + len(c))
        targets[i, span] = torch.tensor(c)
        old[i, span] = torch.tensor(lp)
    return {"ids": ids, "targets": targets, "old": old, **extra}


class GroupBatches:
    """`micro_batch // G` prompts per rank and micro-step, G completions each (module docstring).
    Under DDP every rank draws the same global prompts and answers its own slice."""

    def __init__(self, policy, tok, items, scorer, args, micro_batch, seed, rank=0, world=1):
        if not items:
            raise LmlabError("no training prompts (all were held out for validation, or skipped)")
        self.policy, self.tok, self.items, self.scorer, self.args = policy, tok, items, scorer, args
        self.group = args.num_generations
        self.prompts_per_rank = micro_batch // self.group
        self.seed, self.rank, self.world = seed, rank, world
        self.probs = torch.tensor([it.weight for it in items], dtype=torch.float64)
        self.reference = None  # a frozen copy of the starting policy when beta > 0
        self.draws = 0

    def _draw(self) -> list[int]:
        gen = torch.Generator().manual_seed(row_seed(self.seed, self.draws))
        n = self.prompts_per_rank * self.world
        idx = torch.multinomial(self.probs, n, replacement=True, generator=gen).tolist()
        return idx[self.rank * self.prompts_per_rank : (self.rank + 1) * self.prompts_per_rank]

    def next_batch(self) -> dict[str, torch.Tensor]:
        mine = self._draw()
        first = self.rank * self.prompts_per_rank
        seed = row_seed(self.seed + 1, self.draws)
        requests = [
            Request(
                self.items[i].ids,
                sampling_config(
                    self.items[i], self.args, self.tok, row_seed(seed, first + k), self.group
                ),
            )
            for k, i in enumerate(mine)
        ]
        results = Engine(self.policy, self.tok).run(requests)
        self.draws += 1
        return self.score(requests, results)

    def score(self, requests, results) -> dict[str, torch.Tensor]:
        """Completions (with the stop token that ended them: stopping is a choice the policy
        is trained on), their sampling log-probs, rewards and advantages -> a batch."""
        prompts, answers, completions, old, clipped = [], [], [], [], []
        for req, res in zip(requests, results, strict=True):
            if res.error:
                raise LmlabError(f"GRPO sampling failed: {res.error}")
            for g in res.samples:
                stopped = g.finish_reason == "stop"
                prompts.append(list(req.prompt))
                answers.append(g.tokens)
                completions.append(g.tokens + ([g.stop_token] if stopped else []))
                old.append(g.logprobs + ([g.stop_logprob] if stopped else []))
                clipped.append(not stopped)
        rewards = self.scorer(prompts, answers)
        adv, stats = group_advantages(rewards, self.group, self.args.scale_rewards)
        lengths = torch.tensor([len(c) for c in completions], dtype=torch.float32)
        stats["completions/mean_length"] = float(lengths.mean())
        stats["completions/clipped_ratio"] = float(torch.tensor(clipped, dtype=torch.float).mean())
        batch = collate_groups(
            prompts, completions, old, {"adv": adv, "stats": torch.tensor(list(stats.values()))}
        )
        if self.reference is not None:
            from lmlab.model.logprobs import token_logprobs

            with torch.no_grad():
                device = next(self.reference.parameters()).device
                logits = self.reference(batch["ids"].to(device))
                batch["ref"] = token_logprobs(logits, batch["targets"].to(device)).cpu()
        return batch

    def state_dict(self) -> dict:
        return {"draws": self.draws, "prompts": len(self.items)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("prompts") != len(self.items):
            raise LmlabError(
                f"the run sampled from {state.get('prompts')} prompts, these data give "
                f"{len(self.items)}"
            )
        self.draws = int(state["draws"])


STAT_NAMES = (
    "reward",
    "reward_std",
    "frac_reward_zero_std",
    "completions/mean_length",
    "completions/clipped_ratio",
)
