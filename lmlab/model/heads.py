"""GPTs with another head: a scalar reward model on the last token.

A `RewardModel` is a GPT backbone (no language-model output layer) whose final hidden state at a
chosen position goes through a linear head to one number. It satisfies the trainer's model
protocol (see registry.py) and checkpoints as class "reward".
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lmlab.model.config import ModelConfig
from lmlab.model.gpt import GPT


class RewardModel(nn.Module):
    arch_name = "reward"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gpt = GPT(cfg, with_lm_head=False)
        self.head = nn.Linear(cfg.n_embd, 1)
        nn.init.zeros_(self.head.weight)  # every pair starts at reward 0: loss log 2, no bias
        nn.init.zeros_(self.head.bias)

    @property
    def cfg(self) -> ModelConfig:
        return self.gpt.cfg

    @classmethod
    def from_gpt(cls, gpt: GPT) -> RewardModel:
        """A reward model whose backbone starts from `gpt`'s weights (its output layer dropped)."""
        model = cls(gpt.cfg)
        state = {k: v for k, v in gpt.state_dict().items() if not k.startswith("lm_head.")}
        model.gpt.load_state_dict(state, strict=False)
        return model

    def forward(self, ids: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
        """ids [B, T], last_index [B] (the position whose hidden state is scored) -> rewards [B]."""
        h = self.gpt.hidden(ids)
        rows = torch.arange(ids.shape[0], device=ids.device)
        return self.head(h[rows, last_index]).squeeze(-1).float()

    # ---- the trainer's model protocol ---------------------------------------------------------
    def arch(self) -> dict:
        return {"class": self.arch_name, "config": self.cfg.model_dump(mode="json")}

    @classmethod
    def from_arch(cls, arch: dict) -> RewardModel:
        return cls(ModelConfig.model_validate(arch["config"]))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        return self.gpt.flops_per_token(seq_len)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = self.gpt.param_groups()
        groups["lm_head"] = [self.head.weight]  # the scalar head trains like an output layer
        groups["other"] = [*groups["other"], self.head.bias]
        return groups
