"""Shared pieces of the benchmarks: matched model shapes, HF peers, timing and tables.

Every number a benchmark reports is a ratio against a peer timed in the same process, with the
peers interleaved (A B C, B C A, ...) so that load from other processes on this shared machine
hits every side alike; speeds are medians over rounds, ratios medians of per-round ratios, and
each sample records how many cores other processes took meanwhile.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run_all.py` from a checkout without an install
    sys.path.insert(0, str(ROOT))

from lmlab.interop.mapping import FAMILIES, gpt_from_hf, hf_config  # noqa: E402
from lmlab.model.config import ModelConfig  # noqa: E402
from lmlab.model.gpt import GPT  # noqa: E402
from lmlab.train.mfu import measure_matmul_flops  # noqa: E402

# One shape for every benchmark: ~10-11M parameters, of which 4.2M are the two embeddings.
VOCAB = 8192
WIDTH = 256
DEPTH = 8
HEADS = 4  # head_dim 64
SEQ_LEN = 256
# Llama's MLP rule: 8/3 * width rounded up to a multiple of 256 -> 768 (so the SwiGLU MLP costs
# about what the default ReLU^2 MLP of hidden 4 * width = 1024 does).
LLAMA_HIDDEN = 768
NORM_EPS = 1e-6  # HF Llama's rms_norm_eps, so the Llama-shaped configs compute the same function


def lmlab_default_config(seq_len: int = SEQ_LEN) -> ModelConfig:
    """lmlab's default architecture (ReLU^2 MLP of 4x width, weightless RMSNorm, QK-norm,
    embedding norm, logit softcap) at the shared width/depth/heads/vocabulary."""
    return ModelConfig(depth=DEPTH, n_embd=WIDTH, n_head=HEADS, vocab_size=VOCAB, seq_len=seq_len)


def lmlab_llama_config(seq_len: int = SEQ_LEN) -> ModelConfig:
    """lmlab configured as Llama: SwiGLU, RMSNorm gains, no QK-norm/embedding norm/softcap."""
    return ModelConfig(
        depth=DEPTH,
        n_embd=WIDTH,
        n_head=HEADS,
        vocab_size=VOCAB,
        seq_len=seq_len,
        mlp="swiglu",
        mlp_hidden=LLAMA_HIDDEN,
        norm_weight=True,
        norm_eps=NORM_EPS,
        qk_norm=False,
        embed_norm=False,
        logit_softcap=None,
    )


def hf_llama(cfg: ModelConfig, seed: int = 0):
    """A randomly initialised `transformers.LlamaForCausalLM` with the shapes of `cfg` (no
    download), SDPA attention, fp32, eval mode, eos disabled so generation runs to full length.
    The config comes from lmlab's HF mapping (`lmlab.interop.mapping`), as `lmlab export` writes it."""
    from transformers import AutoModelForCausalLM

    hf_cfg = hf_config(
        cfg, FAMILIES["llama"], bos_token_id=None, eos_token_id=None, pad_token_id=None
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        hf_cfg, attn_implementation="sdpa", dtype=torch.float32
    )
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    model.generation_config.bos_token_id = None
    return model.eval()


def lmlab_from_hf(cfg: ModelConfig, hf) -> GPT:
    """An lmlab GPT holding exactly the weights of the HF model `hf`, through the mapping
    `lmlab import` uses; its config must equal `cfg` (the peers compute the same function)."""
    gpt = gpt_from_hf(hf)
    if gpt.cfg != cfg:
        diff = {k: v for k, v in gpt.cfg.model_dump().items() if getattr(cfg, k) != v}
        raise RuntimeError(f"the HF model maps to a different lmlab config: {diff}")
    return gpt


def matmul_peak(repeats: int = 3) -> float:
    """This process's fp32 matmul peak (FLOP/s): the best of a few measurements, since load from
    other processes can only lower it (a higher peak makes the reported MFU conservative)."""
    return max(measure_matmul_flops("cpu", "fp32") for _ in range(repeats))


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_s() -> float | None:
    """CPU-seconds every process on the machine has used since boot (None off Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _HZ


class Contention:
    """Measures how many cores OTHER processes used while a sample ran: the machine's busy time
    minus this process's own CPU time, over the wall time."""

    def __enter__(self) -> Contention:
        self.busy, self.own, self.wall = _machine_busy_s(), time.process_time(), clock()
        self.cores = float("nan")
        return self

    def __exit__(self, *exc) -> None:
        busy, own, wall = _machine_busy_s(), time.process_time(), clock()
        if busy is not None and self.busy is not None and wall > self.wall:
            others = (busy - self.busy) - (own - self.own)
            self.cores = max(0.0, others / (wall - self.wall))


class Samples(dict):
    """name -> measurements, plus `others[name]`: the cores other processes used during each."""

    def __init__(self, names: Sequence[str]):
        super().__init__({n: [] for n in names})
        self.others: dict[str, list[float]] = {n: [] for n in names}

    def round_contention(self) -> list[float]:
        """Per round, the most any of its samples saw other processes use."""
        return [max(v) for v in zip(*self.others.values(), strict=True)]


def contended(others_cores: float) -> bool:
    """Whether other processes left fewer free cores than this process's OpenMP threads need
    (with a quarter-core margin). Then every parallel region waits for a descheduled thread and
    timings turn erratic, in proportion to how many regions a peer runs, not to its work. A single
    thread has no such barrier: load only slows it, evenly for interleaved peers."""
    threads = torch.get_num_threads()
    return threads > 1 and (os.cpu_count() or 1) - others_cores < threads - 0.25


def interleaved(
    runs: dict[str, Callable[[], float]],
    repeats: int,
    warmup: int = 1,
    budget_s: float | None = None,
    min_repeats: int = 3,
) -> Samples:
    """Call each run `warmup` times, then up to `repeats` rounds of every run in turn; each call
    returns one measurement. The order rotates every round (A B C, B C A, C A B, ...) so neither
    peer always runs first. With `budget_s`, no new round starts once that many seconds have passed
    (counting the warm-up) and at least `min_repeats` rounds are done: a loaded machine gives fewer
    rounds rather than a run that never ends. Each sample also records how many cores other
    processes used meanwhile."""
    t0 = clock()
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    names = list(runs)
    out = Samples(names)
    for r in range(repeats):
        if budget_s is not None and r >= min_repeats and clock() - t0 > budget_s:
            break
        for name in names[r % len(names) :] + names[: r % len(names)]:
            with Contention() as c:
                value = runs[name]()
            out[name].append(value)
            out.others[name].append(c.cores)
    return out


def paired_ratio(ours: Sequence[float], theirs: Sequence[float]) -> float:
    """Median over rounds of ours[i] / theirs[i] (throughputs measured side by side in round i):
    load that changes between rounds cancels out of each ratio."""
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def spread(xs: Sequence[float]) -> float:
    """(max - min) / median: how noisy the repeats were."""
    m = statistics.median(xs)
    return (max(xs) - min(xs)) / m if m else 0.0


def clock() -> float:
    return time.perf_counter()


def machine_info() -> dict:
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table; floats get 3 significant-ish digits."""

    def fmt(x: object) -> str:
        if isinstance(x, float):
            return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"
        return str(x)

    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def llama_like(cfg: ModelConfig) -> ModelConfig:
    """`cfg`'s sizes with lmlab_llama_config's Llama settings (SwiGLU with Llama's hidden rule,
    8/3 x width rounded up to a multiple of 256; RMSNorm gains; no QK-norm, embedding norm or
    softcap), so a peer of any depth can be compared with `hf_llama`."""
    hidden = 256 * -(-8 * cfg.n_embd // (3 * 256))
    return ModelConfig(
        **{
            **cfg.model_dump(),
            "mlp": "swiglu",
            "mlp_hidden": hidden,
            "norm_weight": True,
            "norm_eps": NORM_EPS,
            "qk_norm": False,
            "embed_norm": False,
            "logit_softcap": None,
        }
    )


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """How far memory rose above what the process held when the block started: CUDA's
    max_memory_allocated minus memory_allocated on a CUDA device; on CPU the peak resident set
    (VmHWM, reset by writing 5 to /proc/self/clear_refs) minus the resident set at the start.
    Without that reset (not Linux, or not allowed) the peak is the process's all-time peak, and
    `exact` is False: the growth is then an upper bound. Sets `bytes`, `base_bytes`, `method`."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.cuda = torch.device(device).type == "cuda"

    def __enter__(self) -> PeakMemory:
        import gc

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base_bytes, self.method, self.exact = torch.cuda.memory_allocated(), "cuda", True
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method, self.exact = "rss (VmHWM reset by clear_refs)", True
        except OSError:
            self.method, self.exact = "rss (all-time VmHWM: an upper bound)", False
        self.base_bytes = 1024 * (_proc_status_kib("VmRSS") or 0)
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = 1024 * (_proc_status_kib("VmHWM") or 0)
        self.bytes = max(0, peak - self.base_bytes)


def train_step(model, opt, x: torch.Tensor, y: torch.Tensor, hf: bool, amp=None) -> None:
    """One optimizer step as the training benchmarks time it: the loss (an HF model through
    `labels=`, which it shifts itself), backward, step, zero_grad; the forward under autocast
    to `amp` (a dtype) when given."""
    import contextlib

    cast = torch.autocast(x.device.type, dtype=amp) if amp else contextlib.nullcontext()
    with cast:
        loss = model(input_ids=x, labels=x, use_cache=False).loss if hf else model(x, y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@torch.inference_mode()
def hf_greedy(hf, ids: torch.Tensor, new: int, **kwargs) -> torch.Tensor:
    """HF `generate`, greedy with its KV cache, exactly `new` tokens (eos off): the new ids."""
    out = hf.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        use_cache=True,
        **kwargs,
    )
    return out[:, ids.shape[1] :]
