"""`lmlab export --format hf`: lmlab checkpoints of each exportable shape load in transformers
(AutoModelForCausalLM / AutoTokenizer, no remote code) and compute what lmlab computes."""

import json

import pytest
import torch

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.interop.export import export_hf
from lmlab.interop.hf_import import import_hf
from lmlab.model.checkpoint import load_checkpoint, save_checkpoint
from lmlab.model.config import ModelConfig
from lmlab.model.gpt import GPT
from lmlab.text.chat import render_conversation, render_for_completion
from lmlab.text.tokenizer import train_tokenizer
from tests.interop.tiny_hf import CORPUS, hf_greedy, lmlab_greedy

LLAMA = dict(mlp="swiglu", norm_weight=True, qk_norm=False, embed_norm=False, logit_softcap=None)
SHAPES = {
    "nanochat": ({}, "NanoChatForCausalLM"),  # lmlab's default architecture
    "llama": (dict(LLAMA, tie_embeddings=True), "LlamaForCausalLM"),
    "qwen2": (dict(LLAMA, qkv_bias=True), "Qwen2ForCausalLM"),
    "qwen3": (dict(LLAMA, qk_norm=True, head_dim=16), "Qwen3ForCausalLM"),
}
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello there!"},
    {"role": "assistant", "content": "The cat sat."},
    {"role": "user", "content": "How are you?"},
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus") / "c.txt"
    corpus.write_text("\n".join(CORPUS))
    return train_tokenizer([corpus], vocab_size=300, progress=False)


def lmlab_run(path, tok, seed=0, **over):
    """A run directory with a random (non-zero everywhere) GPT checkpoint and its tokenizer."""
    base = dict(depth=2, n_embd=32, n_head=4, n_kv_head=2, vocab_size=tok.vocab_size, seq_len=64)
    cfg = ModelConfig(**{**base, **over})
    model = GPT(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.3 * noise)
    tok.save(path / "tokenizer")
    arch = {"class": "gpt", "config": cfg.model_dump(mode="json")}
    meta = {"arch": arch, "model": arch["config"], "tokenizer": tok.meta(), "step": 3}
    save_checkpoint(path / "checkpoints" / "best", model, meta)
    return model.eval()


def load_hf(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False)
    return model.eval(), AutoTokenizer.from_pretrained(path, trust_remote_code=False)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_export_loads_in_transformers_with_equal_logits_and_tokens(tmp_path, tok, shape):
    over, hf_class = SHAPES[shape]
    model = lmlab_run(tmp_path / "run", tok, **over)
    export_hf(tmp_path / "run", tmp_path / "hf")
    ref, hf_tok = load_hf(tmp_path / "hf")
    assert type(ref).__name__ == hf_class
    ids = torch.randint(0, tok.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(ids) - ref(ids).logits).abs().max().item() <= 1e-4
    prompt = hf_tok("The cat sat on")["input_ids"]
    assert prompt == [tok.bos_id, *tok.encode("The cat sat on")]  # bos first, as lmlab generate
    assert lmlab_greedy(model, prompt, 12) == hf_greedy(ref, prompt, 12)


def test_exported_chat_template_renders_lmlab_ids(tmp_path, tok):
    lmlab_run(tmp_path / "run", tok)
    export_hf(tmp_path / "run", tmp_path / "hf")
    _, hf_tok = load_hf(tmp_path / "hf")
    want = render_for_completion(tok, MESSAGES)
    got = hf_tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=False)
    assert list(got) == want
    ids, mask = render_conversation(tok, MESSAGES[:3])
    out = hf_tok.apply_chat_template(
        MESSAGES[:3], return_dict=True, return_assistant_tokens_mask=True
    )
    assert out["input_ids"] == ids and out["assistant_masks"] == mask  # SFT's loss mask
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eot_id and gen["bos_token_id"] == tok.bos_id
    assert hf_tok.decode(ids) == tok.decode(ids)


def test_export_then_import_round_trips(tmp_path, tok):
    model = lmlab_run(tmp_path / "run", tok, **SHAPES["qwen3"][0])
    export_hf(tmp_path / "run", tmp_path / "hf")
    back, back_tok, _ = load_checkpoint(import_hf(tmp_path / "hf", tmp_path / "back").path)
    ids = torch.randint(0, tok.vocab_size, (1, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(ids) - back(ids)).abs().max().item() <= 1e-5
    assert render_for_completion(back_tok, MESSAGES) == render_for_completion(tok, MESSAGES)
    assert back_tok.eot_id == tok.eot_id and back_tok.special_id("user") == tok.special_id("user")


def test_short_conv_has_no_transformers_class(tmp_path, tok, capsys):
    lmlab_run(tmp_path / "run", tok, short_conv=4)
    with pytest.raises(LmlabError, match="short_conv=4"):
        export_hf(tmp_path / "run", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    rc = main(
        ["export", "--ckpt", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "hf")]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "short_conv=4" in err


def test_mixed_shape_error_names_every_field(tmp_path, tok):
    lmlab_run(tmp_path / "run", tok, mlp="swiglu")  # nanochat otherwise, but SwiGLU
    with pytest.raises(LmlabError, match="NanoChatForCausalLM, which cannot hold mlp='swiglu'"):
        export_hf(tmp_path / "run", tmp_path / "hf")


def test_cli_export_refuses_a_non_empty_out(tmp_path, tok):
    lmlab_run(tmp_path / "run", tok)
    out = tmp_path / "hf"
    args = ["export", "--ckpt", str(tmp_path / "run"), "--out", str(out)]
    assert main(args) == 0 and (out / "config.json").is_file()
    assert main(args) == 1  # exists: needs --force
    assert main([*args, "--force", "--dtype", "bfloat16"]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_a_trained_checkpoint_exports(tmp_path):
    run = tmp_path / "run"
    sets = ["steps=4", "eval_every=2", "progress=false"]
    argv = ["train", "--profile", "smoke", "--run-dir", str(run)]
    assert main([*argv, *[a for s in sets for a in ("--set", s)]]) == 0
    export_hf(run, tmp_path / "hf")
    model, tok, meta = load_checkpoint(run)
    ref, hf_tok = load_hf(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "lmlab_export.json").read_text())["step"] == meta["step"]
    prompt = hf_tok("the cat")["input_ids"]
    with torch.no_grad():
        diff = (model(torch.tensor([prompt])) - ref(torch.tensor([prompt])).logits).abs().max()
    assert diff.item() <= 1e-4
    assert lmlab_greedy(model.eval(), prompt, 8) == hf_greedy(ref, prompt, 8)


def test_word_tokenizer_exports_with_equal_ids_and_sentencepiece_is_refused(tmp_path):
    from lmlab.text.tokenizer import build_word_tokenizer

    words = build_word_tokenizer(["k1", "v1", "k2", "v2"])
    lmlab_run(tmp_path / "run", words)
    export_hf(tmp_path / "run", tmp_path / "hf")
    _, hf_tok = load_hf(tmp_path / "hf")
    text = "k1 v1\nk2 v2"
    assert hf_tok(text)["input_ids"] == [words.bos_id, *words.encode(text)]
    (tmp_path / "c.txt").write_text("\n".join(CORPUS))
    spm = train_tokenizer(
        [tmp_path / "c.txt"], kind="sentencepiece", vocab_size=300, progress=False
    )
    lmlab_run(tmp_path / "spm-run", spm)
    with pytest.raises(LmlabError, match="cannot export a sentencepiece tokenizer"):
        export_hf(tmp_path / "spm-run", tmp_path / "spm-hf")
