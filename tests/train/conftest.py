import pytest

from lmlab.data.builtin import builtin_dataset


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """The built-in toy corpus, built once per test session: (pretrain dir, sft dir, tokenizer)."""
    root = tmp_path_factory.mktemp("builtin")
    pre, tok = builtin_dataset("toy", "pretrain", root=root)
    sft, _ = builtin_dataset("toy", "sft", root=root)
    return pre, sft, tok


def tiny_sets(data_dir, tok_dir, **over):
    sets = {
        "data.sources": "{" + f'"{data_dir}": 1.0' + "}",
        "data.tokenizer": str(tok_dir),
        "progress": "false",
        "steps": 12,
        "eval_every": 4,
        "eval_batches": 2,
        "micro_batch": 4,
        "model.depth": 1,
        "model.n_embd": 32,
        "model.n_head": 2,
        "model.seq_len": 32,
        "optim.lr": 0.01,
    }
    sets.update(over)
    return [f"{k}={v}" for k, v in sets.items()]
