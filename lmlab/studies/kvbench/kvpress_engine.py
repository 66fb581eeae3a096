"""The optional `kvpress` engine: a Hugging Face causal LM with an NVIDIA kvpress press applied
during the prefill, `compression_ratio = 1 - budget`.

kvpress is not a dependency of lmlab: kvpress 0.5 pins transformers < 5.3 and pandas < 3, older
than what lmlab installs, so it belongs in its own environment (`pip install kvpress`). It does not
report what it kept, so its runs are "budget unverified"; the no-effect check still applies.
NOT tested in lmlab's suite (kvpress could not be installed next to lmlab's pins); only the error
without it is.
"""

from __future__ import annotations

import time

from lmlab.errors import LmlabError
from lmlab.studies.kvbench.config import KvpressEngine
from lmlab.studies.kvbench.engines import BenchEngine, Reply, count_suffix
from lmlab.studies.kvbench.metrics import error_type_for

PRESSES = {
    "snapkv": "SnapKVPress",
    "streamingllm": "StreamingLLMPress",
    "h2o": "ObservedAttentionPress",  # accumulated attention of every query: H2O's score
    "random": "RandomPress",
    "knorm": "KnormPress",
    "tova": "TOVAPress",
}


class KvpressBench(BenchEngine):
    kind = "kvpress"

    def __init__(self, cfg: KvpressEngine):
        try:
            import kvpress  # noqa: F401  (registers the kv-press-text-generation pipeline)
        except ImportError:
            raise LmlabError(
                "engine.kind kvpress needs the kvpress package, which is not installed (it pins "
                "transformers<5.3: install it in its own environment with `pip install kvpress`)"
            ) from None
        from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

        self.cfg = cfg
        self.tok = AutoTokenizer.from_pretrained(cfg.model)
        model = AutoModelForCausalLM.from_pretrained(cfg.model, attn_implementation="eager")
        self.pipe = pipeline(
            "kv-press-text-generation", model=model, tokenizer=self.tok, device=cfg.device
        )

    def model_id(self) -> str:
        return self.cfg.model

    def policies(self) -> tuple[str, ...]:
        return ("full", *PRESSES)

    def fit(self, text: str, max_new: int, truncate: str) -> tuple[int, int]:
        n = len(self.tok(text).input_ids)
        return n, n

    def suffix_tokens(self, prompt: str, suffix: str) -> int:
        return count_suffix(lambda t: self.tok(t).input_ids, prompt, suffix)

    def press(self, policy: str, budget: float):
        import kvpress

        if policy == "full" or budget >= 1.0:
            return None
        return getattr(kvpress, PRESSES[policy])(compression_ratio=1.0 - budget)

    def run_cell(self, items, policy, budget, options, gen):
        press = self.press(policy, budget)
        if any(it.kv_suffix and it.suffix is None for it in items):
            raise LmlabError(
                "generation.kv_suffix: kvpress takes the question as text (answer_cue or "
                "question), not as a number of tokens"
            )
        for it in items:
            t0 = time.perf_counter()
            # kvpress's own split: the context is compressed, the question is fed after it
            question = it.suffix or ""
            context = it.prompt[: len(it.prompt) - len(question)]
            try:
                out = self.pipe(
                    context, question=question, press=press, max_new_tokens=it.max_new_tokens
                )
            except Exception as e:  # one failed request is a row, not the end of the run
                msg = f"{type(e).__name__}: {e}"
                yield it, Reply(error_type=error_type_for(msg), error=msg)
                continue
            text = out["answer"] if isinstance(out, dict) else str(out)
            yield (
                it,
                Reply(
                    text=text,
                    finish_reason="stop",
                    latency_s=time.perf_counter() - t0,
                    prompt_tokens=self.fit(it.prompt, 0, "none")[0],
                ),
            )
