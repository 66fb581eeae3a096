"""The config and tokenizer mappings on their own: real model shapes at full size (no weights),
which lmlab shapes each transformers family takes, and the HF tokenizer wrapper's contract."""

import json

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.interop.mapping import family_for, hf_config, model_config_from_hf
from lmlab.model.config import ModelConfig
from lmlab.text.chat import render_for_completion
from lmlab.text.hf_pretrained import PretrainedTokenizer
from lmlab.text.tokenizer import load_tokenizer
from tests.interop.tiny_hf import tiny_hf_tokenizer

# config.json as shipped by the models users bring (written by transformers 4.x: legacy keys)
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
    "attention_dropout": 0.0, "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "silu",
    "hidden_size": 576, "initializer_range": 0.041666666666666664, "intermediate_size": 1536,
    "is_llama_config": True, "max_position_embeddings": 8192, "mlp_bias": False,
    "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": False, "rope_scaling": None,
    "rope_theta": 100000, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 49152,
}  # fmt: skip
QWEN3_06B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False,
    "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128,
    "hidden_act": "silu", "hidden_size": 1024, "initializer_range": 0.02,
    "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28,
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 151936,
}  # fmt: skip


@pytest.mark.parametrize("raw", [SMOLLM2_135M, QWEN3_06B], ids=["smollm2-135m", "qwen3-0.6b"])
def test_real_shapes_map_to_the_same_parameter_count(tmp_path, raw):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg, family = model_config_from_hf(raw)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    hf_cfg = AutoConfig.from_pretrained(tmp_path)
    assert model_config_from_hf(hf_cfg) == (cfg, family)  # raw json and transformers agree
    with torch.device("meta"):  # full size, no memory
        hf = AutoModelForCausalLM.from_config(hf_cfg)
    assert cfg.num_params() == sum(p.numel() for p in hf.parameters())
    assert cfg.tie_embeddings and cfg.rope_theta == raw["rope_theta"]
    assert family_for(cfg) is family  # and it exports back to its own class


def test_each_family_takes_its_shape_and_the_error_names_what_none_holds():
    llama = dict(
        mlp="swiglu", norm_weight=True, qk_norm=False, embed_norm=False, logit_softcap=None
    )
    assert family_for(ModelConfig()).model_type == "nanochat"
    assert family_for(ModelConfig(logit_softcap=None)).model_type == "nanochat"
    assert family_for(ModelConfig(**llama)).model_type == "llama"
    assert family_for(ModelConfig(**llama, qkv_bias=True)).model_type == "qwen2"
    assert family_for(ModelConfig(**{**llama, "qk_norm": True})).model_type == "qwen3"
    with pytest.raises(LmlabError, match="LlamaForCausalLM, which cannot hold embed_norm=True$"):
        family_for(ModelConfig(**{**llama, "embed_norm": True}))
    with pytest.raises(LmlabError, match="logit_softcap=15.0"):
        hf_config(ModelConfig(**{**llama, "logit_softcap": 15.0}))


def test_qwen_sliding_window_counts_only_when_enabled():
    raw = {**QWEN3_06B, "sliding_window": 4096, "max_position_embeddings": 8192}
    assert model_config_from_hf(raw)[0].seq_len == 8192  # use_sliding_window is false
    with pytest.raises(LmlabError, match="sliding_window=4096"):
        model_config_from_hf({**raw, "use_sliding_window": True})
    assert (
        model_config_from_hf({**raw, "use_sliding_window": True}, seq_len=4096)[0].seq_len == 4096
    )


def test_wrapped_tokenizer_contract(tmp_path):
    tok = PretrainedTokenizer(tiny_hf_tokenizer(), vocab_size=320)  # model pads its embedding
    assert tok.vocab_size == 320 and tok.kind == "hf-pretrained"
    assert tok.special_ids["eot"] == tok.hf.convert_tokens_to_ids("<|im_end|>")
    text = "The cat <|im_end|><|im_start|> sat"
    ids = tok.encode(text)
    assert not any(tok.is_special(i) for i in ids) and tok.decode(ids) == text
    assert tok.encode_batch([text, "The dog"]) == [ids, tok.encode("The dog")]
    with_control = [tok.eot_id, *tok.encode("The dog"), 310]  # 310: a padded row, no text
    assert tok.decode(with_control) == "<|im_end|>The dog"
    assert tok.decode(with_control, skip_special=True) == "The dog"
    with pytest.raises(LmlabError, match="outside the vocabulary"):
        tok.decode([320])
    tok.save(tmp_path / "a")
    again = load_tokenizer(tmp_path / "a")
    assert isinstance(again, PretrainedTokenizer) and again.hash == tok.hash
    assert again.special_ids == tok.special_ids and again.vocab_size == 320
    again.save(tmp_path / "b")
    assert load_tokenizer(tmp_path / "b").hash == tok.hash


def test_tokenizer_without_chat_template_refuses_chat(tmp_path):
    hf = tiny_hf_tokenizer()
    hf.chat_template = None
    tok = PretrainedTokenizer(hf)
    assert tok.eot_id == hf.eos_token_id and tok.special_id("user") == tok.bos_id
    with pytest.raises(LmlabError, match="no chat template"):
        render_for_completion(tok, [{"role": "user", "content": "hi"}])


def test_special_names_follow_each_template_layout():
    from tests.interop.tiny_hf import tiny_llama3_tokenizer

    def names(tok):
        return {n: tok.id_to_piece(i) for n, i in tok.special_ids.items() if n != "pad"}

    llama3 = PretrainedTokenizer(tiny_llama3_tokenizer())
    assert names(llama3) == {
        "bos": "<|begin_of_text|>",
        "eot": "<|eot_id|>",
        **dict.fromkeys(("system", "user", "assistant"), "<|start_header_id|>"),
    }
    smol = PretrainedTokenizer(tiny_hf_tokenizer(bos=True))  # SmolLM2: bos is <|im_start|>
    assert names(smol) == {
        "bos": "<|im_start|>",
        "eot": "<|im_end|>",
        **dict.fromkeys(("system", "user", "assistant"), "<|im_start|>"),
    }
    msgs = [{"role": "user", "content": "Hello"}]
    want = llama3.hf.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
    assert render_for_completion(llama3, msgs) == list(want)


def test_a_shape_lmlab_cannot_build_is_a_one_line_error():
    with pytest.raises(LmlabError, match="n_head=16 is not divisible by n_kv_head=5"):
        model_config_from_hf({**QWEN3_06B, "num_key_value_heads": 5})
