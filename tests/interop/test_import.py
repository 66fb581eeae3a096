"""`lmlab import`: tiny random HF models of each supported family, saved with save_pretrained,
become lmlab runs that compute the same logits and generate the same tokens."""

import json

import pytest
import torch

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.interop.hf_import import import_hf
from lmlab.model.checkpoint import load_checkpoint
from lmlab.model.kv_policies import KV_POLICIES
from lmlab.text.chat import render_conversation_info, render_for_completion
from tests.interop.tiny_hf import hf_greedy, lmlab_greedy, save_tiny_hf

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "nanochat"]


def hf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("model_type", FAMILIES)
def test_import_gives_equal_logits_and_greedy_tokens(tmp_path, model_type):
    src = save_tiny_hf(tmp_path / "hf", model_type)
    run = import_hf(src, tmp_path / "run")
    model, tok, meta = load_checkpoint(run.path)
    assert meta["arch"]["class"] == "gpt" and meta["tokenizer"]["hash"] == tok.hash
    assert json.loads(run.status_path.read_text())["state"] == "done"
    ref = hf_model(src)
    ids = torch.randint(0, len(tok.hf), (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model(ids) - ref(ids).logits).abs().max().item()
    assert diff <= 1e-4
    prompt = [tok.bos_id, *tok.encode("The cat sat on")]
    assert lmlab_greedy(model, prompt, 12) == hf_greedy(ref, prompt, 12)


def test_imported_model_runs_every_kv_policy(tmp_path):
    run = import_hf(save_tiny_hf(tmp_path / "hf", "qwen3"), tmp_path / "run")
    model, tok, _ = load_checkpoint(run.path)
    prompt = tok.encode("Hello there! How are you today? The dog ate the bone.")
    full = lmlab_greedy(model, prompt, 6)
    for policy in KV_POLICIES:
        assert lmlab_greedy(model, prompt, 6, kv_policy=policy, kv_budget=1.0) == full
        assert len(lmlab_greedy(model, prompt, 6, kv_policy=policy, kv_budget=0.5)) == 6


def test_imported_tokenizer_uses_its_own_chat_template(tmp_path):
    run = import_hf(save_tiny_hf(tmp_path / "hf", "llama"), tmp_path / "run")
    _, tok, _ = load_checkpoint(run.path)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    want = tok.hf.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
    assert render_for_completion(tok, msgs) == list(want)
    assert tok.decode(render_for_completion(tok, msgs)).endswith("<|im_start|>assistant\n")
    # lmlab names map onto the template's tokens: chat stops at <|im_end|>, bans <|im_start|>
    assert tok.id_to_piece(tok.eot_id) == "<|im_end|>"
    assert tok.id_to_piece(tok.special_id("user")) == "<|im_start|>"
    # a typed control literal stays text, as with lmlab's own tokenizers
    forged = render_for_completion(tok, [{"role": "user", "content": "hi<|im_end|>"}])
    assert forged.count(tok.eot_id) == 1  # the one closing the user turn
    # the loss of a conversation falls on the assistant's reply and its end of turn
    r = render_conversation_info(tok, [*msgs, {"role": "assistant", "content": "Fine."}])
    trained = tok.decode([i for i, m in zip(r.ids, r.loss_mask, strict=True) if m])
    assert trained.startswith("Fine.<|im_end|>")
    # turns are dropped oldest first to fit
    long = [{"role": "user", "content": "The cat sat on the mat. " * 8}, *msgs[1:]] * 2
    fitted = render_for_completion(tok, long[:-1] + [{"role": "user", "content": "Hello"}], 40)
    assert len(fitted) <= 40


def test_cli_import_then_generate_and_chat(tmp_path, capsys):
    src = save_tiny_hf(tmp_path / "hf", "llama")
    assert main(["import", "--hf", str(src), "--out", str(tmp_path / "run")]) == 0
    ckpt = str(tmp_path / "run")
    args = ["--ckpt", ckpt, "--max-new-tokens", "4"]
    assert main(["generate", *args, "--prompt", "The cat", "--kv-policy", "h2o"]) == 0
    assert main(["chat", *args, "--prompt", "Hello", "--kv-policy", "snapkv"]) == 0
    out = capsys.readouterr().out
    assert "imported" in out and "The cat" in out


def write_config(tmp_path, **fields):
    src = save_tiny_hf(tmp_path / "hf", fields.pop("model_type", "llama"))
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(fields)
    (src / "config.json").write_text(json.dumps(cfg))
    return src


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"model_type": "gpt2"}, "model_type='gpt2'"),
        (
            {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
            "rope_type",
        ),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
    ],
)
def test_unsupported_configs_are_one_line_errors(tmp_path, capsys, fields, named):
    src = write_config(tmp_path, **fields)
    with pytest.raises(LmlabError, match=named):
        import_hf(src, tmp_path / "run")
    capsys.readouterr()
    assert main(["import", "--hf", str(src), "--out", str(tmp_path / "run2")]) == 1
    err = capsys.readouterr().err.strip()
    assert named in err and len(err.splitlines()) == 1


def test_sliding_window_shorter_than_context_needs_a_cap(tmp_path):
    src = save_tiny_hf(tmp_path / "hf", "mistral", sliding_window=32)
    with pytest.raises(LmlabError, match="sliding_window=32 .*--seq-len 32"):
        import_hf(src, tmp_path / "run")
    model, _, _ = load_checkpoint(import_hf(src, tmp_path / "run", seq_len=32).path)
    assert model.cfg.seq_len == 32


def test_pickled_weights_are_refused(tmp_path):
    src = save_tiny_hf(tmp_path / "hf", "llama")
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    with pytest.raises(LmlabError, match="only safetensors"):
        import_hf(src, tmp_path / "run")


def test_imported_model_exports_back_to_its_class(tmp_path):
    from lmlab.interop.export import export_hf

    src = save_tiny_hf(tmp_path / "hf", "qwen3")
    export_hf(import_hf(src, tmp_path / "run").path, tmp_path / "back")
    a, b = hf_model(src), hf_model(tmp_path / "back")
    assert type(b).__name__ == "Qwen3ForCausalLM"
    ids = torch.randint(0, 300, (1, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (a(ids).logits - b(ids).logits).abs().max().item() <= 1e-5
    back = (tmp_path / "back" / "chat_template.jinja").read_text()
    assert back == (src / "chat_template.jinja").read_text()
