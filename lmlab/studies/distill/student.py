"""The student: a projection head D -> hidden -> dim (GELU), an optional learnable linear skip
D -> dim, L2-normalised output. It carries the loss's FIFO queue as buffers (see loss.py).

It follows the trainer's model protocol (param_groups, flops_per_token, arch) and is registered
as "distill_student", so `load_model(checkpoint)` builds it back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.studies.distill.loss import FeatureQueue

ARCH_CLASS = "distill_student"


class ProjectionStudent(nn.Module):
    def __init__(
        self, d_in: int, dim: int = 128, hidden: int = 512, skip: bool = False, queue_size: int = 0
    ):
        super().__init__()
        self.shape = {
            "d_in": d_in,
            "dim": dim,
            "hidden": hidden,
            "skip": skip,
            "queue_size": queue_size,
        }
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.skip = nn.Linear(d_in, dim, bias=False) if skip else None
        self.queue = FeatureQueue(queue_size, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc2(F.gelu(self.fc1(x)))
        if self.skip is not None:
            h = h + self.skip(x)
        return F.normalize(h.float(), dim=-1)

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
        return torch.cat([self(x[i : i + batch]) for i in range(0, len(x), batch)])

    # -- the trainer's protocol
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        mats = [p for p in self.parameters() if p.ndim == 2]
        return {
            "embedding": [],
            "lm_head": [],
            "matrix": mats,
            "other": [p for p in self.parameters() if p.ndim != 2],
        }

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Forward + backward per item (a 'token' is an embedded item here)."""
        return 6.0 * sum(p.numel() for p in self.parameters())

    def arch(self) -> dict:
        return {"class": ARCH_CLASS, "config": dict(self.shape)}

    @classmethod
    def from_arch(cls, arch: dict) -> ProjectionStudent:
        return cls(**arch["config"])

    def weights_only(self) -> dict[str, torch.Tensor]:
        """The student's weights without the training queue (what student_*.safetensors hold)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("queue.")}


def register() -> None:
    from lmlab.model.registry import register_model

    register_model(ARCH_CLASS, ProjectionStudent)
