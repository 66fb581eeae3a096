"""The optional `kvpress` engine: a Hugging Face causal LM with an NVIDIA kvpress press applied
during the prefill, `compression_ratio = 1 - budget`.

kvpress is not a dependency of lmlab's main environment: kvpress 0.5 pins transformers < 5.3 and
pandas < 3, older than what lmlab's `hf` extra resolves to on its own, so it lives in its own
environment (`make test-kvpress` builds `.venv-kvpress` with `pip install -e .[dev,hf,kvpress]`,
which resolves transformers 5.2 and pandas 2.3, and runs tests/studies/kvbench/test_kvbench_kvpress.py
there on a tiny random Llama; CI runs it after `make test`).

The decoding follows kvpress's own pipeline (`KVPressTextGenerationPipeline._forward`): the
context is prefilled inside `with press(model)`, whose hooks compress each layer's cache after its
attention ran, then the rest is fed at its original positions and decoded token by token. The
context/question split is the bench's (`generation.kv_suffix`: the last N prompt tokens are
kvpress's question; 0 = no question, the first token is read from the full prefill as in the local
engine), on the prompt as the bench renders it (BOS + tokens, no chat template), so that all
engines see the same tokens. Unlike kvpress's pipeline it stops at the bench's stop tokens and
samples at `generation.temperature`.

What was kept is measured, not assumed: the cache's length per layer after the prefill, plus the
suffix. kvpress keeps `max(1, int(n x (1 - compression_ratio)))` (floor) where lmlab's policies
keep ceil(budget x n), so its runs are "applied" (fewer positions than the prompt), "verified"
only where budget x n is a whole number.
"""

from __future__ import annotations

import contextlib
import time

from lmlab.errors import LmlabError
from lmlab.studies.kvbench.config import KvpressEngine
from lmlab.studies.kvbench.engines import (
    BenchEngine,
    Reply,
    _peak_memory,
    count_suffix,
    middle_truncate,
)
from lmlab.studies.kvbench.metrics import error_type_for

PRESSES = {
    "snapkv": "SnapKVPress",
    "streamingllm": "StreamingLLMPress",
    "h2o": "ObservedAttentionPress",  # accumulated attention of every query: H2O's score
    "random": "RandomPress",
    "knorm": "KnormPress",
    "tova": "TOVAPress",
}


def make_press(policy: str, budget: float, options, seed: int = 0):
    """The kvpress press for a policy at a budget (None: nothing to compress), with the bench's
    policy options where kvpress has them (snapkv's window and kernel, streamingllm's sinks)."""
    import kvpress

    if policy == "full" or budget >= 1.0:
        return None
    kwargs: dict = {"compression_ratio": 1.0 - budget}
    if policy == "snapkv":
        if options.pooling != "avg":
            raise LmlabError(
                f"grid.options.pooling: kvpress's SnapKV pools with avg only, not {options.pooling}"
            )
        kwargs |= {"window_size": options.window, "kernel_size": options.kernel}
    elif policy == "streamingllm":
        kwargs["n_sink"] = options.sinks
    elif policy == "random":
        kwargs["seed"] = seed
    return getattr(kvpress, PRESSES[policy])(**kwargs)


class KvpressBench(BenchEngine):
    kind = "kvpress"

    def __init__(self, cfg: KvpressEngine):
        try:
            import kvpress  # noqa: F401
        except ImportError:
            raise LmlabError(
                "engine.kind kvpress needs the kvpress package, which is not installed (it pins "
                "transformers<5.3: install it in its own environment with "
                "`pip install -e .[hf,kvpress]`, or run `make test-kvpress`)"
            ) from None
        from transformers import AutoConfig, AutoTokenizer

        self.cfg = cfg
        self.tok = AutoTokenizer.from_pretrained(cfg.model)
        self.context = int(AutoConfig.from_pretrained(cfg.model).max_position_embeddings)
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from transformers import AutoModelForCausalLM

            # eager attention: the h2o press (ObservedAttentionPress) scores the attention weights
            self._model = AutoModelForCausalLM.from_pretrained(
                self.cfg.model, attn_implementation="eager"
            ).to(self.cfg.device)
            self._model.eval()
        return self._model

    def model_id(self) -> str:
        return self.cfg.model

    def policies(self) -> tuple[str, ...]:
        return ("full", *PRESSES)

    def encode(self, text: str) -> list[int]:
        """kvpress's encoding of a context without a chat template: BOS, then the text's tokens."""
        bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
        return bos + self.tok(text, add_special_tokens=False).input_ids

    def fit(self, text: str, max_new: int, truncate: str) -> tuple[int, int]:
        n = len(self.encode(text))
        return (min(n, self.context - max_new) if truncate == "middle" else n), n

    def suffix_tokens(self, prompt: str, suffix: str) -> int:
        return count_suffix(self.encode, prompt, suffix)

    def stop_tokens(self, gen) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        stops = set(eos if isinstance(eos, list) else [eos]) | {self.tok.eos_token_id}
        newline = self.tok("\n", add_special_tokens=False).input_ids
        if gen.stop_at_newline and len(newline) == 1:
            stops.add(newline[0])
        return {t for t in stops if t is not None}

    def run_cell(self, items, policy, budget, options, gen):
        press = make_press(policy, budget, options, gen.seed)
        stops = self.stop_tokens(gen)
        for it in items:
            ids = self.encode(it.prompt)
            limit = self.context - it.max_new_tokens
            if len(ids) > limit and gen.truncate == "none":
                msg = (
                    f"prompt of {len(ids)} tokens exceeds the context of {self.context} "
                    f"by {len(ids) - limit}"
                )
                yield it, Reply(error_type="CONTEXT_LENGTH_EXCEEDED", error=msg)
                continue
            ids = middle_truncate(ids, limit)
            try:
                reply = self._generate(ids, it.kv_suffix, it.max_new_tokens, press, stops, gen)
            except Exception as e:  # one failed request is a row, not the end of the run
                msg = f"{type(e).__name__}: {e}"
                reply = Reply(error_type=error_type_for(msg), error=msg, prompt_tokens=len(ids))
            yield it, reply

    def _generate(self, ids, suffix, max_new, press, stops, gen) -> Reply:
        import torch
        from transformers import DynamicCache

        from lmlab.model.sampling import sample_next

        model, dev = self.model, self.cfg.device
        n, split = len(ids), len(ids) - suffix
        rng = torch.Generator().manual_seed(gen.seed)
        cache = DynamicCache()
        t0 = time.perf_counter()
        with torch.no_grad():
            with press(model) if press is not None else contextlib.nullcontext():
                out = model(
                    input_ids=torch.tensor([ids[:split]], device=dev),
                    past_key_values=cache,
                    logits_to_keep=1,
                )
            kept = [cache.get_seq_length(layer) for layer in range(len(cache))]
            per_position = 2 * cache.layers[0].keys[0, :, 0].numel()
            per_position *= cache.layers[0].keys.element_size()
            if suffix:  # kvpress's question: fed after the compression, at its own positions
                out = model(
                    input_ids=torch.tensor([ids[split:]], device=dev),
                    past_key_values=cache,
                    position_ids=torch.arange(split, n, device=dev)[None],
                    logits_to_keep=1,
                )
            prefill_s = time.perf_counter() - t0
            tokens, finish = [], "length"
            while len(tokens) < max_new:
                nxt = sample_next(out.logits[:, -1].cpu(), [rng], temperature=gen.temperature)
                if int(nxt) in stops:
                    finish = "stop"
                    break
                tokens.append(int(nxt))
                if len(tokens) == max_new:
                    break
                out = model(
                    input_ids=nxt.view(1, 1).to(dev),
                    past_key_values=cache,
                    position_ids=torch.tensor([[n + len(tokens) - 1]], device=dev),
                )
        decode_s = time.perf_counter() - t0 - prefill_s
        retained = [k + suffix for k in kept]
        return Reply(
            text=self.tok.decode(tokens, skip_special_tokens=True),
            finish_reason=finish,
            latency_s=prefill_s + decode_s,
            ttft_s=prefill_s,
            prefill_s=prefill_s,
            decode_s=decode_s,
            decode_tokens_per_s=(len(tokens) / decode_s) if decode_s > 0 and tokens else None,
            prompt_tokens=n,
            completion_tokens=len(tokens),
            kv_retained=retained,
            kv_bytes_kept=sum(retained) * per_position,
            kv_bytes_full=n * len(kept) * per_position,
            peak_mem_bytes=_peak_memory(self.cfg.device),
        )
