"""The `distill` recipe on the one trainer: teacher + kNN (prepare), student, loss, anchor batches
and the neighbour evaluator (build), then the seed's logs and student checkpoints (finish).

    lmlab train --set recipe=distill --set recipe_args.teacher_npy=emb.npy
    lmlab distill train ...             (the same, with the seed's defaults and environment)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from lmlab.errors import LmlabError
from lmlab.model.registry import unwrap
from lmlab.studies.distill.config import DistillArgs
from lmlab.studies.distill.knn import cached_topk, check_k
from lmlab.studies.distill.loss import distill_loss
from lmlab.studies.distill.metrics import NeighbourEval
from lmlab.studies.distill.student import GPTStudent, ProjectionStudent
from lmlab.studies.distill.teacher import Teacher, load_teacher
from lmlab.studies.distill.text_inputs import TextInputs, text_inputs
from lmlab.train.recipes import Recipe, RecipeParts, RunContext


@dataclass
class Prepared:
    teacher: Teacher
    knn_idx: np.ndarray  # [N, K]
    knn_sim: np.ndarray  # [N, K]
    train_ids: np.ndarray  # anchors
    query_ids: np.ndarray  # held-out eval queries (never anchors)
    text: TextInputs | None = None  # the GPT student's tokenizer and token rows


def build_student(args: DistillArgs, p: Prepared):
    """The student the args name; the GPT one starts from gpt.init_from when given."""
    if p.text is None:
        d_in = p.teacher.emb.shape[1]
        return ProjectionStudent(d_in, args.dim, args.hidden, args.skip, args.queue_size)
    model = GPTStudent(p.text.model.model_dump(mode="json"), args.dim, args.queue_size)
    if args.gpt.init_from:
        from lmlab.model.checkpoint import load_model

        model.load_encoder(load_model(args.gpt.init_from)[0])
    return model


def split_items(
    n: int, holdout: float, max_queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, query ids): a seeded share of items held out as queries, the same for every
    training seed so that seeds are compared on the same queries."""
    n_q = max(1, min(max_queries, round(n * holdout)))
    if n_q >= n:
        raise LmlabError(f"recipe_args.holdout={holdout} leaves no training anchors of {n} items")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_q:]), np.sort(perm[:n_q])


class AnchorBatches:
    """Anchor ids in seeded epochs without replacement, plus the queue slots to draw negatives
    from; the state is three counters, so resume is exact."""

    def __init__(
        self, train_ids, batch_size: int, neg_m: int, queue_size: int, seed: int, rank: int = 0
    ):
        self.ids = torch.as_tensor(np.asarray(train_ids), dtype=torch.long)
        self.batch = min(batch_size, len(self.ids))
        self.neg_m, self.queue_size = neg_m, queue_size
        self.seed = seed * 1_000_003 + rank * 7_919
        self.epoch = self.pos = self.step = 0
        self._perm: tuple[int, torch.Tensor] | None = None

    def _order(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = (epoch, self.ids[torch.randperm(len(self.ids), generator=g)])
        return self._perm[1]

    def next_batch(self) -> dict[str, torch.Tensor]:
        parts, need = [], self.batch
        while need:
            order = self._order(self.epoch)
            take = order[self.pos : self.pos + need]
            parts.append(take)
            need -= len(take)
            self.pos += len(take)
            if self.pos >= len(order):
                self.epoch, self.pos = self.epoch + 1, 0
        g = torch.Generator().manual_seed(self.seed + 10_000_019 * (self.step + 1))
        slots = (
            torch.randperm(self.queue_size, generator=g)[: self.neg_m]
            if self.neg_m
            else torch.zeros(0, dtype=torch.long)
        )
        self.step += 1
        return {"anchors": torch.cat(parts), "neg_slots": slots}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self.step = int(state["epoch"]), int(state["pos"]), int(state["step"])


class DistillRecipe(Recipe):
    name = "distill"
    args = DistillArgs
    description = "Embedding distillation (seed 004): listwise KL over teacher neighbours + queue"

    def prepare(self, cfg, args: DistillArgs):
        teacher = load_teacher(args)
        if args.teacher_hash and args.teacher_hash != teacher.hash:
            raise LmlabError(
                f"recipe_args.teacher_hash={args.teacher_hash} but the teacher now hashes to "
                f"{teacher.hash} (its data changed; drop teacher_hash to start a new run)"
            )
        n = teacher.emb.shape[0]
        check_k(args.k, n)
        check_k(args.eval_k, n, "recipe_args.eval_k")
        train_ids, query_ids = split_items(n, args.holdout, args.max_eval_queries, args.split_seed)
        knn_idx, knn_sim = cached_topk(teacher.emb, args.k, teacher.hash)
        cfg = cfg.model_copy(
            update={"recipe_args": {**cfg.recipe_args, "teacher_hash": teacher.hash}}
        )
        text = None
        if args.student == "gpt":  # tokenized once; a batch gathers rows by item id
            text = text_inputs(args.gpt, teacher.texts, teacher.source)
        tok = text.tokenizer if text else None  # saved in the run dir, named in checkpoints
        return cfg, tok, Prepared(teacher, knn_idx, knn_sim, train_ids, query_ids, text)

    def build(self, ctx: RunContext) -> RecipeParts:
        args: DistillArgs = ctx.args
        p: Prepared = ctx.prepared
        dev = ctx.device
        teacher = torch.from_numpy(p.teacher.emb).to(dev)
        inputs = teacher if p.text is None else p.text.rows.to(dev)  # what the student reads
        model = build_student(args, p)
        batches = AnchorBatches(
            p.train_ids,
            ctx.cfg.micro_batch,
            args.neg_m,
            args.queue_size,
            ctx.cfg.seed,
            ctx.dist.rank,
        )
        objective = partial(
            distill_loss,
            teacher=teacher,
            knn_idx=torch.from_numpy(p.knn_idx).to(dev),
            knn_sim=torch.from_numpy(p.knn_sim).to(dev),
            args=args,
            inputs=inputs,
        )
        judge = NeighbourEval(teacher, torch.from_numpy(p.query_ids).to(dev), args.eval_k)

        def evaluate(m) -> dict[str, float]:
            return judge.score(unwrap(m).embed(inputs))

        best = f"vs_teacher_recall{args.eval_k}"
        meta = {
            "teacher_hash": p.teacher.hash,
            "teacher_source": p.teacher.source,
            "n_items": int(teacher.shape[0]),
            "n_train": len(p.train_ids),
            "n_queries": len(p.query_ids),
            "student": args.student,
        }
        return RecipeParts(
            model, objective, batches, evaluate, (best, "max"), meta, {"masked_frac": "min"}
        )

    def finish(self, ctx: RunContext, final: dict[str, float]) -> None:
        if ctx.dist.is_main:
            from lmlab.studies.distill.report import write_seed_outputs

            write_seed_outputs(ctx)


def register() -> None:
    from lmlab.studies.distill.student import register as register_student
    from lmlab.train.recipes import register_recipe

    register_student()
    register_recipe(DistillRecipe())
