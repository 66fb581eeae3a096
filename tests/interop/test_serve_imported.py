"""An imported HF model behind `lmlab serve`: chat uses the model's own template."""

from lmlab.interop.hf_import import import_hf
from lmlab.model.checkpoint import load_checkpoint
from lmlab.model.engine import Engine, GenerationConfig
from lmlab.text.chat import role_token_ids
from tests.interop.tiny_hf import save_tiny_hf
from tests.serve.conftest import serve

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there!"}]


def test_served_chat_renders_the_imported_template_and_equals_the_engine(tmp_path):
    run = import_hf(save_tiny_hf(tmp_path / "hf", "qwen3"), tmp_path / "run").path
    model, tok, _ = load_checkpoint(run)
    ids = list(tok.hf.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=False))
    cfg = GenerationConfig(
        max_new_tokens=8, stop_tokens=(tok.eot_id,), banned_tokens=tuple(role_token_ids(tok))
    )
    (want,) = Engine(model, tok).generate([ids], cfg)
    server = serve(run)
    try:
        r = server.client().chat.completions.create(
            model=run.name, messages=MESSAGES, max_tokens=8, temperature=0
        )
    finally:
        server.close()
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.content == want.text
