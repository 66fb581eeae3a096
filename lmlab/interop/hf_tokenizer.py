"""An lmlab tokenizer as a transformers `PreTrainedTokenizerFast`, with lmlab's chat template in Jinja.

`apply_chat_template(messages, add_generation_prompt=True)` renders the ids that
`lmlab.text.chat.render_for_completion` renders, and `return_assistant_tokens_mask=True` gives
lmlab's loss mask (assistant content and its `<|eot|>`). Plain `tokenizer(text)` starts with
`<|bos|>`, as `lmlab generate` does.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.text.base import SPECIAL_TOKENS, Tokenizer, literal

# lmlab's template (text/chat.py) in Jinja; {% generation %} marks what SFT puts loss on.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown role ' + message['role']) }}{%- endif -%}"
    "{%- if message['role'] == 'system' and not loop.first -%}"
    "{{ raise_exception('a system message may only come first') }}{%- endif -%}"
    "{%- if loop.first -%}{{ bos_token }}{%- endif -%}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] + '<|eot|>' }}{% endgeneration %}"
    "{%- else -%}{{ message['content'] + '<|eot|>' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)


def to_hf_tokenizer(tok: Tokenizer, max_length: int):
    """A transformers tokenizer equivalent to `tok` (an imported tokenizer is returned as it is)."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    hf = getattr(tok, "hf", None)
    if hf is not None:  # lmlab.text.hf_pretrained: already a transformers tokenizer
        return hf
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(tmp)
        file = Path(tmp) / "tokenizer.json"
        if not file.is_file():
            raise LmlabError(
                f"cannot export a {tok.kind} tokenizer: only tokenizer.json tokenizers "
                "(lmlab's byte-level BPE and word-level ones, or imported HF ones) export"
            )
        raw = RawTokenizer.from_file(str(file))
    bos = literal("bos")
    raw.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, tok.bos_id)]
    )
    names = tok.special_ids
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=bos,
        eos_token=literal("eot"),
        pad_token=literal("pad") if "pad" in names else literal("eot"),
        unk_token=literal("unk") if "unk" in names else None,
        extra_special_tokens=[literal(n) for n in SPECIAL_TOKENS if n not in ("bos", "eot")],
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )
