"""Tiny Hugging Face models and tokenizers in the real on-disk format, built here (never downloaded).

`save_tiny_hf(dir, model_type)` writes what `save_pretrained` writes for a randomly initialised
model of that family (SmolLM2 / Qwen3-0.6B shapes, scaled down) plus a byte-level BPE tokenizer
with a ChatML chat template (the template SmolLM2-Instruct and Qwen ship).
"""

from __future__ import annotations

from pathlib import Path

import torch

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The cat sat on the mat. The dog ate the bone.",
    "Hello there! How are you today? I am fine, thank you.",
    "Small language models learn from tiny corpora in tests.",
] * 20

# Per family: the config fields of the shape users bring, scaled down.
SHAPES = {
    "llama": dict(tie_word_embeddings=True),  # SmolLM2-135M: tied, GQA
    "mistral": dict(sliding_window=None),
    "qwen2": dict(tie_word_embeddings=True),
    "qwen3": dict(tie_word_embeddings=True, head_dim=16),  # Qwen3-0.6B: head_dim decoupled
}


LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]  # fmt: skip


def tiny_llama3_tokenizer():
    """Llama 3's layout: bos <|begin_of_text|>, turns in header tokens, <|eot_id|> ends a turn."""
    return tiny_hf_tokenizer(
        specials=LLAMA3_SPECIALS,
        template=LLAMA3,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token=None,
    )


def tiny_hf_tokenizer(
    vocab_size: int = 300, bos: bool = False, specials=None, template=CHATML, **named
):
    """A byte-level BPE `PreTrainedTokenizerFast`, by default with ChatML specials and template
    (`bos=True`: SmolLM2-Instruct's layout, whose bos is <|im_start|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    specials = specials or ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(CORPUS, trainer)
    names = {
        "bos_token": "<|im_start|>" if bos else None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        **named,
    }
    return PreTrainedTokenizerFast(tokenizer_object=raw, chat_template=template, **names)


def tiny_hf_config(model_type: str, vocab_size: int, **over):
    from transformers import CONFIG_MAPPING

    base = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    extra = {} if model_type == "nanochat" else SHAPES.get(model_type, {})
    return CONFIG_MAPPING[model_type](**{**base, **extra, **over})


def save_tiny_hf(directory: Path, model_type: str, seed: int = 0, **over) -> Path:
    """A random tiny model of `model_type` and its tokenizer, written with save_pretrained."""
    from transformers import AutoModelForCausalLM

    tok = tiny_hf_tokenizer()
    cfg = tiny_hf_config(model_type, len(tok), **over)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # non-trivial norm gains and biases, so a wrong mapping shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(
                    1.0 + 0.3 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p)
                )
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    """`n` greedy tokens from a transformers model (no eos: it runs to full length)."""
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    ids = torch.tensor([prompt])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False
    )
    return out[0, len(prompt) :].tolist()


def lmlab_greedy(model, prompt: list[int], n: int, **cfg) -> list[int]:
    """`n` greedy tokens from an lmlab model through the one engine."""
    from lmlab.model.engine import Engine, GenerationConfig

    (gen,) = Engine(model).generate([prompt], GenerationConfig(max_new_tokens=n, **cfg))
    return gen.tokens
