"""The one training loop. Every objective (lm, sft, reward, dpo, grpo, distill) plugs in here.

An objective is a plain function `(model, batch) -> (loss, metrics)` (a loss already averaged:
the step averages micro-steps and ranks), or `-> (loss_sum, metrics, weight)`: the step's loss is
then the sum of loss_sum over every micro-step and rank divided by the sum of weight (token-level
normalisation; the gradients are rescaled once the step's total weight is known). The data is
any object with `next_batch()`, `state_dict()` and `load_state_dict()`; evaluation is a function
`(model) -> metrics`. The model is anything with the protocol of `model/registry.py`. The loop
owns optimizers, schedule, accumulation, clipping, autocast, checkpoints, exact resume, DDP and
the progress bar. Recipes (`recipes.py`) build what goes in.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from lmlab import __version__
from lmlab.errors import LmlabError
from lmlab.model.checkpoint import load_training_state, save_checkpoint
from lmlab.model.registry import unwrap
from lmlab.runs.rundir import RunDir
from lmlab.train.config import TrainConfig
from lmlab.train.dist import Dist
from lmlab.train.mfu import peak_flops
from lmlab.train.optim import build_optimizers, lr_factor, set_lr

Objective = Callable[
    [torch.nn.Module, Any], tuple
]  # (loss, metrics) or (loss_sum, metrics, weight)


class Batches(Protocol):
    def next_batch(self) -> Any: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


def to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        model: torch.nn.Module,
        objective: Objective,
        data: Batches,
        run: RunDir,
        dist: Dist,
        evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
        ckpt_meta: dict | None = None,
        best_metric: tuple[str, str] = ("val_loss", "min"),
    ):
        self.cfg, self.model, self.objective, self.data = cfg, model, objective, data
        self.run, self.dist, self.evaluate_fn = run, dist, evaluate
        self.ckpt_meta = ckpt_meta or {}
        self.best_name, self.best_mode = best_metric
        self.best: float | None = None
        self.step = 0
        self.accum = cfg.accum_steps(dist.world_size)
        self.optimizers = build_optimizers(model, cfg.optim)
        self.amp_dtype = AMP.get(cfg.dtype)
        self.scaler = torch.amp.GradScaler(dist.device.type) if cfg.dtype == "fp16" else None
        self.net = model
        if dist.enabled:
            ids = [dist.local_rank] if dist.device.type == "cuda" else None
            self.net = DDP(model, device_ids=ids)
        if cfg.model.compile:
            self.net = torch.compile(self.net)

    # ---------------------------------------------------------------- pieces
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.amp_dtype)

    def _trainer_state(self) -> dict:
        return {
            "step": self.step,
            "data": self.data.state_dict(),
            "best": self.best,
            "scaler": self.scaler.state_dict() if self.scaler else None,
        }

    def save(self, tag: str, metrics: dict, with_optimizer: bool) -> None:
        if not self.dist.is_main:
            return
        arch = unwrap(self.model).arch()
        meta = {
            **self.ckpt_meta,
            "arch": arch,
            "model": arch.get("config"),
            "step": self.step,
            "metrics": metrics,
            "phase": self.cfg.phase,
            "train_config": self.cfg.model_dump(mode="json"),
            "lmlab_version": __version__,
        }
        save_checkpoint(
            self.run.checkpoints / tag,
            self.model,
            meta,
            optimizers=self.optimizers if with_optimizer else None,
            trainer_state=self._trainer_state() if with_optimizer else None,
        )

    def maybe_resume(self) -> bool:
        latest = self.run.checkpoints / "latest"
        if not (latest / "optim.json").exists():
            return False
        state = load_training_state(latest, self.model, self.optimizers)
        self.step = int(state["step"])
        self.best = state.get("best")
        try:
            self.data.load_state_dict(state["data"])
        except LmlabError as e:
            raise LmlabError(
                f"{self.run.path}: cannot resume this run: {e}; train it elsewhere with "
                "--run-dir DIR, or start it over with --no-resume"
            ) from None
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.run.truncate_metrics(self.step)
        return True

    def _improved(self, metrics: dict) -> bool:
        value = metrics.get(self.best_name)
        if value is None or not math.isfinite(value):
            return False
        if self.best is None or (
            value < self.best if self.best_mode == "min" else value > self.best
        ):
            self.best = value
            return True
        return False

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.evaluate_fn is None:
            return {}
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            metrics = self.evaluate_fn(self.model)
        self.model.train()
        return metrics

    # ---------------------------------------------------------------- the loop
    def train_step(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        tokens, loss_sum, weight = 0, 0.0, 0.0
        weighted: bool | None = None
        for micro in range(self.accum):
            batch = to_device(self.data.next_batch(), self.dist.device)
            sync = micro == self.accum - 1 or not self.dist.enabled
            ctx = contextlib.nullcontext() if sync else self.net.no_sync()
            with ctx:
                with self.autocast():
                    out = self.objective(self.net, batch)
                loss, metrics = out[0], dict(out[1])
                if weighted is None:
                    weighted = len(out) == 3
                elif weighted != (len(out) == 3):
                    raise LmlabError(
                        "the objective must return a weight on every micro-step or none"
                    )
                if not torch.isfinite(loss):
                    raise LmlabError(
                        f"loss is {loss.item()} at step {self.step}: training diverged "
                        "(lower optim.lr, or check the data)"
                    )
                # a weighted loss is a sum: its gradient is divided by the step's total weight below
                scaled = loss if weighted else loss / self.accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            tokens += int(metrics.pop("tokens", 0))
            if weighted:
                loss_sum += loss.item()
                weight += float(out[2])
            else:
                totals["loss"] = totals.get("loss", 0.0) + loss.item() / self.accum
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) / self.accum
        if self.scaler:
            for opt in self.optimizers:
                self.scaler.unscale_(opt)
        if weighted:
            step_sums = torch.tensor(
                [loss_sum, weight], dtype=torch.float64, device=self.dist.device
            )
            self.dist.all_sum(step_sums)
            total_loss, total_weight = step_sums.tolist()
            # DDP averaged the ranks' gradients; the step wants their sum over the total weight
            factor = self.dist.world_size / total_weight if total_weight > 0 else 0.0
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.mul_(factor)
        if self.cfg.optim.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
            totals["grad_norm"] = norm.item()
        for opt in self.optimizers:
            if self.scaler:
                self.scaler.step(opt)
            else:
                opt.step()
        if self.scaler:
            self.scaler.update()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        out_metrics = {k: self.dist.all_mean(v) for k, v in totals.items()}
        if weighted:
            out_metrics["loss"] = total_loss / total_weight if total_weight > 0 else 0.0
            out_metrics["loss_weight"] = total_weight
        out_metrics["tokens"] = tokens * self.dist.world_size
        return out_metrics

    def fit(self, resume: bool = True) -> dict[str, float]:
        cfg = self.cfg
        if resume and self.maybe_resume() and self.dist.is_main:
            print(
                f"resumed from {self.run.checkpoints / 'latest'} at step {self.step} of {cfg.steps}"
            )
        if self.step < cfg.steps and getattr(self.run, "was_done", False):
            self.run.reopen()  # more steps for a finished run: it is no longer done
        self.model.train()
        flops_per_token = unwrap(self.model).flops_per_token(cfg.model.seq_len)
        peak = cfg.peak_flops or peak_flops(self.dist.device.type, cfg.dtype)
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not (cfg.progress and self.dist.is_main),
            desc=self.run.id,
            dynamic_ncols=True,
        )
        last_metrics: dict[str, float] = {}
        if cfg.eval_at_start and self.step == 0:
            self.run.log(0, **self.evaluate())
        while self.step < cfg.steps:
            lr = set_lr(self.optimizers, lr_factor(self.step, cfg.steps, cfg.schedule))
            t0 = time.perf_counter()
            m = self.train_step()
            dt = time.perf_counter() - t0
            self.step += 1
            tok_s = m.pop("tokens") / dt
            mfu = flops_per_token * tok_s / peak
            row = {**m, "lr": lr, "tokens_per_s": tok_s, "mfu": mfu}
            is_last = self.step == cfg.steps
            evaluated = bool(cfg.eval_every and self.step % cfg.eval_every == 0 or is_last)
            if evaluated:
                row.update(self.evaluate())
            if self.step % cfg.log_every == 0 or evaluated:
                self.run.log(self.step, **row)  # before the checkpoint: a resume truncates to it
            # latest (with optimizer state) at every eval and every ckpt_every steps, so a kill
            # between evaluations loses at most ckpt_every steps
            keep_step = bool(cfg.ckpt_every and self.step % cfg.ckpt_every == 0)
            if evaluated or keep_step:
                self.save("latest", row, with_optimizer=True)
            if evaluated and self._improved(row):
                self.save("best", row, with_optimizer=False)
            if keep_step:
                self.save(f"step_{self.step:06d}", row, with_optimizer=False)
            bar.update(1)
            bar.set_postfix(
                loss=f"{m['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", mfu=f"{mfu:.1%}"
            )
            last_metrics = row
        bar.close()
        self.dist.barrier()
        return last_metrics
