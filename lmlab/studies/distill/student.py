"""The students. Both map a batch of item rows to L2-normalised [B, dim] embeddings and carry the
loss's FIFO queue as buffers (see loss.py):

  ProjectionStudent ("distill_student"): a head D -> hidden -> dim (GELU) over the teacher's
      vectors, with an optional learnable linear skip D -> dim.
  GPTStudent ("distill_gpt_student"): an lmlab GPT encoder over the item's tokens (rows padded
      with PAD, see text_inputs.py), its final hidden states mean-pooled over the real tokens,
      then a linear map to dim. It sees only the text, never the teacher's vector.

They follow the trainer's model protocol (param_groups, flops_per_token, arch) and are
registered by name, so `load_model(checkpoint)` builds them back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.model.config import ModelConfig
from lmlab.model.gpt import GPT
from lmlab.model.pooling import masked_mean
from lmlab.studies.distill.loss import FeatureQueue

ARCH_CLASS = "distill_student"
GPT_ARCH_CLASS = "distill_gpt_student"
PAD = -1  # a padded position of a token row (text_inputs.PAD)


class Student(nn.Module):
    """What both students share: the queue, batched embedding, checkpoint identity."""

    arch_name = ""
    embed_batch = 4096  # rows per forward pass when embedding every item

    def __init__(self, shape: dict, dim: int, queue_size: int):
        super().__init__()
        self.shape = dict(shape)
        self.queue = FeatureQueue(queue_size, dim)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        n = self.embed_batch
        return torch.cat([self(x[i : i + n]) for i in range(0, len(x), n)])

    def arch(self) -> dict:
        return {"class": self.arch_name, "config": dict(self.shape)}

    @classmethod
    def from_arch(cls, arch: dict) -> Student:
        return cls(**arch["config"])

    def weights_only(self) -> dict[str, torch.Tensor]:
        """The student's weights without the training queue (what student_*.safetensors hold)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("queue.")}


class ProjectionStudent(Student):
    arch_name = ARCH_CLASS

    def __init__(
        self, d_in: int, dim: int = 128, hidden: int = 512, skip: bool = False, queue_size: int = 0
    ):
        shape = {"d_in": d_in, "dim": dim, "hidden": hidden, "skip": skip, "queue_size": queue_size}
        super().__init__(shape, dim, queue_size)
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.skip = nn.Linear(d_in, dim, bias=False) if skip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc2(F.gelu(self.fc1(x)))
        if self.skip is not None:
            h = h + self.skip(x)
        return F.normalize(h.float(), dim=-1)

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


class GPTStudent(Student):
    arch_name = GPT_ARCH_CLASS
    embed_batch = 1024
    chunk_rows = 256  # rows per encoder pass within a batch

    def __init__(self, model: dict, dim: int = 128, queue_size: int = 0):
        cfg = ModelConfig.model_validate(model)
        super().__init__(
            {"model": cfg.model_dump(mode="json"), "dim": dim, "queue_size": queue_size},
            dim,
            queue_size,
        )
        self.gpt = GPT(cfg, with_lm_head=False)
        self.proj = nn.Linear(cfg.n_embd, dim)

    @property
    def cfg(self) -> ModelConfig:
        return self.gpt.cfg

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids [B, T] (any id where mask is False), mask [B, T] real tokens -> [B, dim] unit rows.
        Padding must be on the right: the GPT is causal, so the real positions never see it."""
        pooled = masked_mean(self.gpt.hidden(ids), mask)
        return F.normalize(self.proj(pooled).float(), dim=-1)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [B, L] token ids, PAD after each item's tokens -> [B, dim].

        A batch of anchors and their neighbours repeats items and mixes short and long ones, so
        each distinct row is encoded once, in chunks of similar length cut to their own longest
        row (on the demo corpus: ~6x fewer token positions than one padded [B, L] pass)."""
        uniq, inverse = torch.unique(rows, dim=0, return_inverse=True)
        lengths = (uniq != PAD).sum(dim=1)
        order = lengths.argsort()
        parts = []
        for chunk in order.split(self.chunk_rows):
            width = max(1, int(lengths[chunk].max()))
            part = uniq[chunk, :width]
            parts.append(self.encode(part.clamp_min(0), part != PAD))
        return torch.cat(parts)[order.argsort()][inverse]

    def load_encoder(self, gpt: nn.Module) -> None:
        """Start the encoder from a trained GPT (or a reward model's backbone); its output layer,
        if any, is dropped."""
        gpt = getattr(gpt, "gpt", gpt)
        state = {k: v for k, v in gpt.state_dict().items() if not k.startswith("lm_head.")}
        self.gpt.load_state_dict(state)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = self.gpt.param_groups()
        groups["lm_head"] = [self.proj.weight]  # the map to dim trains like an output layer
        groups["other"] = [*groups["other"], self.proj.bias]
        return groups

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Forward + backward per item (a 'token' is an item) at the encoder's full context: an
        upper bound, as items are shorter. The trainer's model.seq_len is not this model's."""
        t = self.cfg.seq_len
        return self.gpt.flops_per_token(t) * t + 6.0 * self.proj.weight.numel()


def register() -> None:
    from lmlab.model.registry import register_model

    register_model(ARCH_CLASS, ProjectionStudent)
    register_model(GPT_ARCH_CLASS, GPTStudent)
